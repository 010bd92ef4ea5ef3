"""Policy-driven pseudonymization and k-anonymity / l-diversity / t-closeness.

Imports pandas, numpy, cryptography, pydantic and PyYAML only: never torch or Flower.
"""

from anonymize.errors import InputError

__all__ = ["InputError"]
