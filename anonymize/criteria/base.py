"""The one interface every privacy criterion implements (k-anonymity, l-diversity, t-closeness).

Algorithms (Mondrian, lattice) never look inside a criterion: they hand it candidate equivalence
classes as sizes plus, per sensitive column, a (classes x sensitive values) count matrix, and get
back which classes pass. One evaluation shape serves both a Mondrian split (2 or a few children)
and a lattice node (thousands of classes), which keeps the checks vectorized.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SensitiveColumn:
    """A sensitive column as the criteria see it: its name, global value counts and EMD ground distance."""

    name: str
    counts: np.ndarray  # count per sensitive code over the whole table (codes sorted by value)
    kind: str  # "ordered" (numeric EMD) or "equal" (categorical EMD)


class Criterion(ABC):
    """A privacy criterion checked per equivalence class."""

    name: str = "criterion"
    needs_sensitive: bool = False

    @abstractmethod
    def satisfied(self, sizes: np.ndarray, hists: Sequence[np.ndarray]) -> np.ndarray:
        """Boolean per class: does the class pass? `hists[j]` is (classes, values of sensitive j)."""
