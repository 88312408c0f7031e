"""Benchmarks (``make bench``): figures measured on this machine, printed and saved as JSON."""
