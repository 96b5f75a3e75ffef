"""A plain string becomes a Literal member only when it is one, whole."""

from __future__ import annotations

from typing import Literal, get_args

from agent.core import one_of

Color = Literal["red", "green"]
COLORS: tuple[Color, ...] = get_args(Color)


def test_a_member_is_handed_back_and_anything_else_is_none() -> None:
    assert one_of("green", COLORS) == "green"
    assert [one_of(v, COLORS) for v in ("blue", "Green", "green\n", "", None, 1)] == [None] * 6


def test_the_keys_of_a_table_are_choices_too() -> None:
    table: dict[Color, int] = {"red": 1, "green": 2}
    assert one_of("red", table) == "red"
    assert one_of("blue", table) is None
