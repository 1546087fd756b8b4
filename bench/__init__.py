"""Benchmarks: each compares bertserve with its reference system in one run and prints ratios."""
