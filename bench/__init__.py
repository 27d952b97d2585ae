"""Benchmarks. Every figure is a ratio against a baseline measured in the same run on the same
machine (these machines are shared and noisy), never an absolute promise."""
