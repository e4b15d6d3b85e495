"""Benchmark harnesses behind `moderation bench`; results go to bench/results/."""
