"""Benchmarks: model complexity (params, MACs), op and model speed."""

from timeshift.bench.complexity import Complexity, model_complexity

__all__ = ["Complexity", "model_complexity"]
