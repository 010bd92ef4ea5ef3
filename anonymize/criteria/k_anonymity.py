"""k-anonymity: every equivalence class holds at least k records (Sweeney 2002)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymize.criteria.base import Criterion


class KAnonymity(Criterion):
    name = "k-anonymity"

    def __init__(self, k: int) -> None:
        self.k = int(k)

    def satisfied(self, sizes: np.ndarray, hists: Sequence[np.ndarray]) -> np.ndarray:
        return sizes >= self.k
