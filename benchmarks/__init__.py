"""Speed benchmarks of lora_edu: ``python -m benchmarks [name-filter ...]``.

Each ``benchmarks/bench_*.py`` module defines ``run() -> list[Result]``. Every figure compares
two things measured in the same run — ours against a peer library (bitsandbytes, PEFT, SciPy,
``torch.svd_lowrank``) or against a baseline (``nn.Linear``, the same code without the feature) —
so the table compares like with like on whatever machine runs it. The functions compared are
timed interleaved, the ratio is formed per repeat, and the table shows its median and p10–p90
(``benchmarks.common``). A target is a predicate on the median of such a ratio; throughputs are
printed as information only. Benchmarks are never part of the test suite.
"""
