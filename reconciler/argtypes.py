"""Argument types for argparse: numbers within bounds, refused with a message that says which.

A bound also refuses `nan` (no comparison holds for it) and `inf`, which `float()` accepts and
which made a lock wait forever.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def number_in(convert: Callable[[str], N], low: N, high: N, what: str,
              unit: str = "") -> Callable[[str], N]:
    """An argparse `type=` for a number from `low` to `high`, e.g. `number_in(int, 0, 65535,
    "a port")`."""
    suffix = f" {unit}" if unit else ""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not {what} in {low:g}..{high:g}{suffix}")
        return value

    return parse
