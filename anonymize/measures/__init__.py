"""Figures computed on a release: achieved k / l / t, re-identification risk and utility loss.
"""
