"""Reproduce the published numbers: the release and paper tables as data (``tables``), the benchmark splits
with their official protocols (``benchmarks``), cells evaluated through the VL trainer's evaluation and cached
one JSON each (``runner``), detection / ADE20K cells through the framework adapters (``dense``), and the
comparison as Markdown / CSV / PNG (``report``). CLI: ``beit3-plugins benchmark`` (``cli``); docs/reproduction.md.
"""
from .benchmarks import BENCHMARKS, Benchmark, get_benchmark  # noqa: F401
from .tables import TABLES, Reported, Table, get_table  # noqa: F401

__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "TABLES", "Reported", "Table", "get_table"]
