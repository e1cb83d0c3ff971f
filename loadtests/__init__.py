"""Locust load tests of a Parley stack (loadtests/locustfile.py); see docs/benchmarks.md, "Capacity under load"."""
