"""Synthetic customers spread over silos (bank branches, partner firms), for tests and demos.

Faker fills small per-locale pools; numpy and pyarrow build every column vectorized, so a million
rows take seconds. Labels come from a documented logistic ground truth (`privmodel.data.synth.truth`)
whose Bayes AUC is known. See docs/synth.md.
"""

from privmodel.data.synth.core import (
    BEHAVIOUR,
    CHUNK_ROWS,
    COLUMNS,
    CONSENT,
    IDENTIFIERS,
    LABELS,
    QUASI_IDENTIFIERS,
    SynthData,
    generate,
    generate_chunks,
    generate_data,
    true_probabilities,
)
from privmodel.data.synth.locales import PHONE_PATTERN, SUPPORTED_LOCALES
from privmodel.data.synth.population import AS_OF, SiloProfile, silo_profiles
from privmodel.data.synth.truth import bayes_auc

__all__ = [
    "AS_OF",
    "BEHAVIOUR",
    "CHUNK_ROWS",
    "COLUMNS",
    "CONSENT",
    "IDENTIFIERS",
    "LABELS",
    "PHONE_PATTERN",
    "QUASI_IDENTIFIERS",
    "SUPPORTED_LOCALES",
    "SiloProfile",
    "SynthData",
    "bayes_auc",
    "generate",
    "generate_chunks",
    "generate_data",
    "silo_profiles",
    "true_probabilities",
]
