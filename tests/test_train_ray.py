"""`privmodel train --engine ray` (issue 13, "Scale"): training's data preparation on Ray Data.

The ray engine runs the local engine's per-batch step (`encoded.encode_batch`) per block and gathers
the blocks on the driver in row order: the arrays, labels, counts, fairness groups and content hash
must be byte for byte the local engine's, and a customer without consent never reaches the arrays.
One local Ray (2 CPUs, temp dir under /tmp) serves the module; blocks are forced small.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from anonymize.errors import InputError  # noqa: E402
from privmodel.dp import budget  # noqa: E402
from privmodel.workflows import encoded, encoded_ray  # noqa: E402
from privmodel.workflows import train as wf  # noqa: E402
from tests.conftest import ray_session  # noqa: E402
from tests.test_cli_train import POLICY, make_table  # noqa: E402

ROWS = 3000


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    with ray_session():
        yield


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoded, "BATCH_ROWS", 700)  # local: 5 batches
    monkeypatch.setattr(encoded_ray, "BLOCK_ROWS", 400)  # ray: 8 blocks, boundaries unlike the local ones


def _inputs(tmp: Path, suffix: str) -> tuple[Path, Path]:
    """Customers, a third without consent (in runs), exact repeats within and across batches/blocks."""
    frame = make_table(ROWS)
    frame["consent_analytics"] = (np.arange(ROWS) // 250) % 3 != 1
    frame = pd.concat([frame, frame.iloc[[3, 5, 401, 402, 1500, 2999]]], ignore_index=True)
    data, policy = tmp / f"customers.{suffix}", tmp / "policy.yaml"
    if suffix == "parquet":
        frame.to_parquet(data, index=False, row_group_size=500)
    else:
        frame.to_csv(data, index=False)
    text = (POLICY % {"cap": 10.0}).replace("name: churn_modeling\n", "name: churn_modeling\n  consent: consent_analytics\n")
    policy.write_text(text + "  consent_analytics: {role: consent, type: boolean}\n")
    return data, policy


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_ray_engine_gives_the_local_arrays(tmp_path: Path, small_blocks: None, suffix: str) -> None:
    data, policy_path = _inputs(tmp_path, suffix)
    policy = wf.load_policy_with_cap(policy_path)
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = encoded.encode_file(data, policy, "churn", None, tmp_path / "local")
    distributed = encoded_ray.encode_file_on_ray(data, policy, "churn", None, tmp_path / "ray")
    assert isinstance(distributed.data.x_num, np.memmap)
    for a, b in ((local.data.x_num, distributed.data.x_num), (local.data.x_cat, distributed.data.x_cat),
                 (local.y, distributed.y)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert distributed.rows.as_record() == local.rows.as_record()
    assert local.rows.removed["exact_duplicates"] == 6 and sum(local.rows.removed.values()) > 900
    assert distributed.content == local.content
    if suffix == "parquet":
        assert distributed.content == budget.content_id(data)
    every = np.arange(len(local.y))
    assert local.groups(every) is not None
    np.testing.assert_array_equal(distributed.groups(every)["gender"], local.groups(every)["gender"])  # type: ignore[index]
    assert sorted(distributed.spilled) == sorted(local.spilled)
    # the card check reads the spilled raw values (here the customer tokens): one named is refused on both
    import pyarrow as pa

    def spilled(enc: encoded.EncodedRows, name: str) -> list[str]:
        with pa.memory_map(str(enc.spilled[name])) as source:
            return [str(v) for v in pa.ipc.open_file(source).read_all().column(0).to_pylist()]

    for name in local.spilled:  # the same tokens: one secret, loaded on the driver, on every worker
        assert spilled(distributed, name) == spilled(local, name)
    token = spilled(local, "customer_id")[-1]
    for enc in (local, distributed):
        enc.check_card("a card that names nobody")
        with pytest.raises(Exception, match="customer_id"):
            enc.check_card(f"a card that names {token}")
    frame = pd.read_parquet(data) if suffix == "parquet" else pd.read_csv(data)
    consenting = frame[frame["consent_analytics"]]
    # a customer without consent never reaches the arrays: as many rows as consenting distinct customers
    assert len(distributed.y) == consenting.drop_duplicates().shape[0]
    np.testing.assert_array_equal(distributed.y, consenting.drop_duplicates()["churn"].to_numpy(dtype=float))
    expected = distributed.encoder.transform(consenting.drop_duplicates())
    np.testing.assert_array_equal(distributed.data.x_num, expected.x_num)
    np.testing.assert_array_equal(distributed.data.x_cat, expected.x_cat)
    if suffix == "parquet":  # a block's bad value: the local engine's one line, the file's data rows named
        bad = frame.assign(tenure_months=frame["tenure_months"].astype(float))
        bad.loc[1300, "tenure_months"] = np.nan  # a consenting customer
        bad.to_parquet(data, index=False)
        (tmp_path / "bad").mkdir()
        with pytest.raises(InputError, match=r"data rows (\d+)-\d+\): feature column tenure_months .* data row (\d+)$") as err:
            encoded_ray.encode_file_on_ray(data, policy, "churn", None, tmp_path / "bad")
        first, within = re.search(r"data rows (\d+)-.* data row (\d+)$", str(err.value)).groups()  # type: ignore[union-attr]
        assert int(first) + int(within) - 1 == 1301  # the block's rows are named, as the local engine names its batch's


def test_cli_engine_ray_bad_address_is_one_line(tmp_path: Path) -> None:
    """Through the CLI (a subprocess, as a user runs it): one line, exit 2, no traceback, no model."""
    import socket

    from tests.conftest import run_cli

    data, policy = _inputs(tmp_path, "parquet")
    out = tmp_path / "model"
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["train", str(data), "--label", "churn", "--policy", str(policy), "--out", str(out)]
    done = run_cli(*args, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: --ray-address 127.0.0.1:{port}: no Ray head answers there"]
    assert not out.exists()
    done = run_cli(*args, "--ray-address", f"127.0.0.1:{port}")
    assert done.returncode == 2 and "--ray-address needs --engine ray" in done.stderr
    # a bad value found in a Ray block: its one line, not Ray's task traceback
    frame = pd.read_parquet(data)
    frame["tenure_months"] = frame["tenure_months"].astype(float)
    frame.loc[1300, "tenure_months"] = np.nan
    frame.to_parquet(data, index=False)
    done = run_cli(*args, "--engine", "ray", timeout=180)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().splitlines() == [
        f"error: {data}: feature column tenure_months is empty or not finite at data row 1301"]
