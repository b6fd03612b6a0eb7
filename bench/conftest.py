"""Benchmarks: run with ``pytest bench/ --benchmark-json=bench/results/bench.json``.

Every end-to-end figure is measured next to the kernel's VXLAN device on the
same testbed in the same run, and reported as a ratio; ``bench/report.py``
turns the JSON into the summary table. Figures are never asserted.
"""
