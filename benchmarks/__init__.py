"""Speed benchmarks of lora_edu: ``python -m benchmarks [name-filter ...]``.

Each ``benchmarks/bench_*.py`` module defines ``run() -> list[Result]``. Every figure is a ratio
against a baseline measured in the same run, so the table compares like with like on whatever
machine runs it. Benchmarks are never part of the test suite.
"""
