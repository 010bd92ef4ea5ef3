"""Honest figures about a model: metrics with intervals, the membership-inference audit, the privacy-utility curve.
"""
