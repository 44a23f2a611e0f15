"""lora_edu.timing: interleaved rounds in a random order, every call recorded once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lora_edu.timing import fastest_ms, interleaved_times


def recorder():
    calls = []
    return calls, {name: (lambda n=name: calls.append(n)) for name in "abc"}


def test_each_round_calls_each_function_once_in_a_seeded_random_order():
    calls, fns = recorder()
    times = interleaved_times(fns, repeat=6, warmup=2, seed=3)
    assert calls[:6] == list("abcabc")                      # the warm-up, in order
    rounds = [calls[6 + 3 * i: 9 + 3 * i] for i in range(6)]
    assert all(sorted(r) == list("abc") for r in rounds)
    # the orders are numpy's permutations for that seed (an independent replay)
    rng = np.random.default_rng(3)
    assert rounds == [[("abc")[i] for i in rng.permutation(3)] for _ in range(6)]
    assert len({tuple(r) for r in rounds}) > 1
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}


def test_times_are_the_calls_durations():
    fns = {"short": lambda: time.sleep(0.001), "long": lambda: time.sleep(0.02)}
    times = interleaved_times(fns, repeat=3, warmup=0)
    assert all(t >= 0.019 for t in times["long"]) and all(t >= 0.0009 for t in times["short"])
    best = fastest_ms(fns, repeat=3, warmup=0)
    assert best["long"] >= 19 and best["short"] < best["long"]


@pytest.mark.parametrize("kwargs, exc", [
    (dict(fns=[lambda: 0], repeat=1), TypeError),
    (dict(fns={}, repeat=1), ValueError),
    (dict(fns={"a": 3}, repeat=1), TypeError),
    (dict(fns={1: lambda: 0}, repeat=1), TypeError),
    (dict(fns={"a": lambda: 0}, repeat=0), ValueError),
    (dict(fns={"a": lambda: 0}, repeat=1.0), TypeError),
    (dict(fns={"a": lambda: 0}, repeat=1, warmup=-1), ValueError),
    (dict(fns={"a": lambda: 0}, repeat=1, seed=-1), ValueError),
])
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        interleaved_times(**kwargs)
