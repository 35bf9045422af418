"""Benchmarks (not tests): `python -m bench` prints the plugin and operator numbers side by side."""
