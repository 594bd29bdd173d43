"""Benchmarks (``make bench``): figures measured on this machine, apart from the tests."""
