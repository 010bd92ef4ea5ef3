"""Plumbing both sides share: the run config, TLS, the worker socket messages, simulation and deployment.
"""
