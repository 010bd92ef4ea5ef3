"""Engines a release runs on: `local` (`anonymize.pipeline.run` in this process) or `ray` (Ray Data,
`anonymize.engines.ray_engine`: the same steps in blocks on a local Ray or a Ray cluster)."""

from __future__ import annotations

ENGINES = ("local", "ray")
