"""Benchmarks: each measures shoplake against a named baseline in the same run and reports the ratio."""
