"""Load generator and benchmarks (not tests): `python -m bench --help`."""
