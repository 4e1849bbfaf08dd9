"""The serving bench (``ares bench --task inference``): every serving policy answering the same
requests, sent at a fixed rate, on the same scenario and model.

Importing the package is light (no torch): the runner is :mod:`experiments.inference.runner`.
"""

from experiments.inference.options import SERVING_BENCH_POLICIES, InferenceOptions

__all__ = ["SERVING_BENCH_POLICIES", "InferenceOptions"]
