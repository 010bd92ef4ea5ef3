"""Generalization of quasi-identifiers: hierarchies, Mondrian, the lattice search, and their front door.
"""
