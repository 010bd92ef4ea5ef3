"""Flower-based training across data silos, each partner keeping its data and privacy budget."""
