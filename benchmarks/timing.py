"""Timing helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import time


class TimedRewards:
    """Wraps an env's reward pipeline to add up the time spent inside it, apart from the rest."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.seconds = 0.0

    # The pipeline's interface, spelled out (the agent checkpoints its statistics, a rollout is one batch):
    @property
    def names(self) -> list[str]:
        return self.pipeline.names

    @property
    def wants_tokens(self) -> bool:
        return self.pipeline.wants_tokens

    @property
    def interactive(self) -> bool:
        return self.pipeline.interactive

    @property
    def terms(self) -> list:
        return self.pipeline.terms

    def state_dict(self) -> dict:
        return self.pipeline.state_dict()

    def load_state_dict(self, state) -> None:
        self.pipeline.load_state_dict(state)

    def one_batch(self, *args, **kwargs):
        return self.pipeline.one_batch(*args, **kwargs)  # a rollout normalizes with one set of statistics

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.pipeline(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
