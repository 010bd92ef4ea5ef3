"""privmodel: privacy-preserving customer modeling.

Kept import-light on purpose: `privmodel --help` and Flower ClientApp processes must not pay for
torch, flwr or scikit-learn unless they use them.
"""

__version__ = "0.1.0"
