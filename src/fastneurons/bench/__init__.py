"""Benchmarks of fastneurons (python -m fastneurons.bench)."""
