"""Amounts travel as decimal strings: a float never gets near money."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Union

#: What the client takes for an amount: an exact `Decimal`, an `int`, or a decimal string.
AmountLike = Union[Decimal, int, str]


def amount_text(value: AmountLike, field: str = "amount") -> str:
    """The wire text of an amount. A `float` (or `bool`) is a `TypeError` before any request:
    binary floating point cannot hold most decimal amounts exactly."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{field}: pass a Decimal, an int or a decimal string, not {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        try:
            parsed = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{field}: {value!r} is not a decimal number") from None
        if not parsed.is_finite():
            raise ValueError(f"{field}: {value!r} is not a finite number")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{field}: {value} is not a finite number")
        return format(value, "f")
    raise TypeError(f"{field}: pass a Decimal, an int or a decimal string, not {type(value).__name__}")
