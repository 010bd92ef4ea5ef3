"""What `privmodel synth` reports about a run, gathered chunk by chunk (no per-row arrays kept)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from privmodel.data.synth.core import SynthData, merge_mess
from privmodel.data.synth.population import BOUNDS, SiloProfile
from privmodel.data.synth.truth import AucBins


@dataclass
class SynthSummary:
    """Rows, label rates and mean (valid) age per silo, the Bayes AUCs and the mess counts."""

    profiles: list[SiloProfile] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    churn: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    purchase: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    age_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    age_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mess: dict[str, float] = field(default_factory=dict)
    auc_churn: AucBins = field(default_factory=AucBins)
    auc_purchase: AucBins = field(default_factory=AucBins)

    def add(self, chunk: SynthData) -> None:
        """Count one chunk in."""
        if not self.profiles:
            self.profiles, self.regions = chunk.profiles, chunk.regions
            self.rows, self.churn, self.purchase, self.age_rows = (
                np.zeros(len(self.profiles), dtype=np.int64) for _ in range(4)
            )
            self.age_sum = np.zeros(len(self.profiles))
        table, k = chunk.table, len(self.profiles)
        silo = table.column("silo").to_numpy()
        age = table.column("age").to_numpy()
        valid = (age >= BOUNDS["age"][0]) & (age <= BOUNDS["age"][1])  # injected bad ages would distort the mean
        self.rows += np.bincount(silo, minlength=k)
        self.churn += np.bincount(silo, weights=table.column("churn").to_numpy(), minlength=k).astype(np.int64)
        self.purchase += np.bincount(silo, weights=table.column("will_purchase").to_numpy(), minlength=k).astype(
            np.int64
        )
        self.age_sum += np.bincount(silo[valid], weights=age[valid], minlength=k)
        self.age_rows += np.bincount(silo[valid], minlength=k)
        self.mess = merge_mess([self.mess, chunk.mess])
        self.auc_churn.add(chunk.p_churn)
        self.auc_purchase.add(chunk.p_will_purchase)

    def gather(self, chunks: Iterable[SynthData]) -> Iterator[SynthData]:
        """Pass the chunks on (to the writer), counting each."""
        for chunk in chunks:
            self.add(chunk)
            yield chunk
            del chunk  # not kept alive while the next chunk is generated

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())
