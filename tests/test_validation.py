"""Tests of the shared argument checks."""

import pytest

from lora_edu.validation import check_int


def test_check_int_accepts_and_returns_value():
    assert check_int("steps", 5, 1) == 5
    assert check_int("t_init", 0, 0) == 0


@pytest.mark.parametrize("value", [1.0, "3", None, True])
def test_check_int_rejects_non_int_with_name(value):
    with pytest.raises(TypeError, match="steps must be an int"):
        check_int("steps", value, 1)


def test_check_int_rejects_below_minimum_with_name():
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        check_int("steps", 0, 1)
