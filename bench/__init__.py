"""Benchmarks of aeflow (run as scripts: python bench/throughput.py --help)."""
