"""Experiments on an emulated scenario: the bench (every policy run on it, results.json, the
comparison report and plots). Above every package but the CLI, which it never imports."""
