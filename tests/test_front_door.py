"""The packages' front doors: public names re-exported lazily, nothing heavy imported by the package itself."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("package", "names"), [
    ("privmodel", ["DPPropensityClassifier", "TrainRequest", "train", "score", "curve", "charge", "BudgetExceeded",
                   "model_rows", "verify", "load_model", "generate"]),
    ("anonymize", ["run", "minimise", "load_policy", "InputError"]),
    ("federated", ["FedConfig", "PartnerSpec", "run_simulation"]),
])
def test_public_names_load_lazily(package: str, names: list[str]) -> None:
    code = (f"import sys, {package}\n"
            "heavy = [m for m in ('torch', 'flwr', 'ray', 'sklearn', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            f"from {package} import {', '.join(names)}\n"
            f"assert sorted({package}.__all__) == sorted(set({package}.__all__))\n"
            f"missing = [n for n in {package}.__all__ if getattr({package}, n, None) is None]\n"
            "assert not missing, missing\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_unknown_name_is_an_attribute_error() -> None:
    import privmodel

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        privmodel.nope  # noqa: B018
