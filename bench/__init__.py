"""Benchmarks: each script prints its numbers and ratios against a named baseline run side by side."""
