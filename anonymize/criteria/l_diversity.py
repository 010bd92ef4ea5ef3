"""l-diversity (Machanavajjhala et al. 2007) in its three usual variants, per sensitive column.

- distinct: at least l different sensitive values per class;
- entropy: entropy of the class's sensitive distribution >= log(l);
- recursive (c, l): r_1 < c * (r_l + ... + r_m), counts sorted in decreasing order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymize.criteria.base import Criterion


def distinct_values(hist: np.ndarray) -> np.ndarray:
    return (hist > 0).sum(axis=1)


def entropy(hist: np.ndarray) -> np.ndarray:
    """Shannon entropy (natural log) per class row."""
    sizes = hist.sum(axis=1, keepdims=True)
    p = hist / np.maximum(sizes, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1)


def recursive_c_needed(hist: np.ndarray, l_value: int) -> np.ndarray:
    """Per class, r_1 / (r_l + ... + r_m): the class is (c, l)-diverse iff c is strictly larger."""
    ordered = -np.sort(-hist, axis=1)
    tail = ordered[:, l_value - 1 :].sum(axis=1) if ordered.shape[1] >= l_value else np.zeros(len(hist))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tail > 0, ordered[:, 0] / np.where(tail > 0, tail, 1), np.inf)


class LDiversityCriterion(Criterion):
    needs_sensitive = True

    def __init__(self, l_value: int, variant: str = "distinct", c: float | None = None) -> None:
        self.l_value = int(l_value)
        self.variant = variant
        self.c = c
        self.name = f"{variant} l-diversity"

    def satisfied(self, sizes: np.ndarray, hists: Sequence[np.ndarray]) -> np.ndarray:
        ok = np.ones(len(sizes), dtype=bool)
        for hist in hists:
            if self.variant == "distinct":
                ok &= distinct_values(hist) >= self.l_value
            elif self.variant == "entropy":
                ok &= entropy(hist) >= np.log(self.l_value) - 1e-12
            else:
                ok &= recursive_c_needed(hist, self.l_value) < float(self.c or 0.0)
        return ok
