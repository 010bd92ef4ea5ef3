"""Workflows: what a user asks privmodel to do, written once and called by every door.

The CLI (`privmodel/cli`), the demo, the estimator and federated partners call these; the
CLI only parses arguments, calls one workflow and prints. Each privacy rule has one owner here or
below: consent and minimisation (`rows.model_rows`), the budget (`privmodel.dp.budget.charge`),
secret DP noise (`privmodel.dp.training.fit`), the held-out split (`prepare.split`).

| module | workflow |
|---|---|
| `rows` | the rows a model path may read, and the unit of privacy they give |
| `prepare` | labels, the policy's encoder, feature checks, the split, δ < 1/n |
| `train` | train + card + budget + ledger + publish (`TrainRequest` holds the defaults) |
| `encoded`, `encoded_ray` | training's data preparation batch by batch into memory-mapped arrays; on Ray Data (`train --engine ray`) |
| `score` | score and evaluate a trained model (consenting customers only) |
| `curve` | privacy-utility curve, every private point charged |
| `release` | anonymize a table into a release (and re-identify / re-key one, with authority) |
| `synthesize` | synthetic customers written as silo files and a starter policy |
| `federation` | federated training of partners on Flower's simulation engine |
| `report` | verify every ledger and write the HTML report |
| `demo` | all of the above on synthetic partners (`privmodel demo`) |
| `run_ledger` | the ledger a run writes, and the one way a failed run is recorded |
"""
