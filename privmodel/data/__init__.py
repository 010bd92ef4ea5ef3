"""Data in: the policy-driven encoder (`features`) and synthetic customers (`synth`).
"""
