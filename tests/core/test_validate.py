"""The argument checks every public entry uses: one message shape, no silent fixing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facegen.errors import InvalidArgumentError
from facegen.validate import check_choice, check_int, check_number


def test_check_int_accepts_ints_in_range_and_numpy_ints() -> None:
    assert check_int(3, "n", minimum=1) == 3
    v = check_int(np.int64(7), "n", minimum=0, maximum=7)
    assert v == 7 and type(v) is int
    assert check_int(-5, "offset") == -5


@pytest.mark.parametrize("bad", [True, 2.0, "3", None, np.float32(1)])
def test_check_int_refuses_non_integers(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"`n` must be an integer >= 1, got"):
        check_int(bad, "n", minimum=1)


def test_check_int_names_the_range() -> None:
    with pytest.raises(ValueError, match=r"`steps` must be an integer in \[1, 10\], got 11"):
        check_int(11, "steps", minimum=1, maximum=10)
    with pytest.raises(ValueError, match=r"`k` must be an integer <= 4, got 5"):
        check_int(5, "k", maximum=4)


def test_check_number_bounds_open_and_closed() -> None:
    assert check_number(1, "strength", minimum=0, maximum=1, min_open=True) == 1.0
    with pytest.raises(InvalidArgumentError, match=r"in \(0, 1\], got 0"):
        check_number(0, "strength", minimum=0, maximum=1, min_open=True)
    with pytest.raises(InvalidArgumentError, match=r"< 1, got 1"):
        check_number(1.0, "p", maximum=1, max_open=True)
    assert check_number(np.float32(0.5), "p", minimum=0) == 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "0.5", None])
def test_check_number_refuses_nan_inf_bool_and_strings(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="`x` must be a"):
        check_number(bad, "x")


def test_check_choice_lists_the_choices() -> None:
    assert check_choice("blur", "mode", ["blur", "mask"]) == "blur"
    with pytest.raises(
        InvalidArgumentError, match=r"`mode` must be one of 'blur', 'mask', got 'x'"
    ):
        check_choice("x", "mode", ("blur", "mask"))
    with pytest.raises(InvalidArgumentError):
        check_choice(True, "k", [1, 2])  # True == 1, but a flag is not a number
    with pytest.raises(InvalidArgumentError):
        check_choice([1], "k", [1, 2])  # unhashable is just not a choice
