"""Reading and writing resources as JSON bytes: decimals as written, however deep.

R4 decimals keep their precision (`100.00` is not `100.0`): `loads` gives a number whose
float form would print otherwise a `Decimal` value, a float that remembers the text it was
written as, and `dumps` writes that text back. Only bodies that have such a number take
the slower parse.

orjson refuses values nested more than 254 containers deep, and a resource within
`max_resource_depth` (two containers per element step when the element repeats) can nest
deeper. Such values are serialised in slices: every container `_SLICE` levels below the
previous slice is serialised on its own and spliced in as an `orjson.Fragment`, which gives
exactly the bytes orjson would give without its limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_SLICE = 128
# Number tokens with a fraction or an exponent, where JSON puts a number (after `:`, `[`,
# `,` or a space); one inside a string only costs the slower parse, never a wrong value.
_DECIMAL = re.compile(rb"(?<![\w.+\-])-?\d+(?:\.\d+(?:[eE][-+]?\d+)?|[eE][-+]?\d+)(?![\w.])")


class Decimal(float):
    """A JSON number that a float would print otherwise (`100.00`, `1e2`): its value for
    comparisons and indexes, its text for serialising."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Decimal:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __reduce__(self) -> tuple[type[Decimal], tuple[str]]:
        return (Decimal, (self.text,))

    def __deepcopy__(self, memo: dict[int, Any]) -> Decimal:
        return self  # immutable


def _number(text: str) -> float:
    value = float(text)
    return value if repr(value) == text else Decimal(text)


def _refuse_constant(name: str) -> Any:
    raise orjson.JSONDecodeError(f"{name} is not JSON", name, 0)


def loads(raw: bytes | str) -> Any:
    """Parse JSON (orjson's rules: NaN and Infinity refused, UTF-8 checked), keeping the
    text of every decimal that a float would change."""
    value = orjson.loads(raw)
    data = raw.encode() if isinstance(raw, str) else raw
    for match in _DECIMAL.finditer(data):
        token = match.group()
        if repr(float(token)) != token.decode():
            return json.loads(data, parse_float=_number, parse_constant=_refuse_constant)
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=option)
    except orjson.JSONEncodeError:
        # Too deep, or not serialisable at all: then the sliced attempt raises the same error.
        return orjson.dumps(_sliced(value, option), default=_default, option=option)


def _sliced(value: Any, option: int) -> Any:
    """A copy of `value` whose containers at every `_SLICE`th level are Fragments."""
    top: list[Any] = [value]
    cuts: list[tuple[int, Any, Any]] = []  # (depth, parent copy, key) of each cut container
    stack: list[tuple[Any, Any, Any, int]] = [(top, 0, value, 0)]
    while stack:
        parent, key, original, depth = stack.pop()
        copy: dict[Any, Any] | list[Any]
        if isinstance(original, dict):
            copy = dict(original)
            children: Any = original.items()
        elif isinstance(original, list):
            copy = list(original)
            children = enumerate(original)
        else:
            continue
        parent[key] = copy
        if depth and depth % _SLICE == 0:
            cuts.append((depth, parent, key))
        stack.extend((copy, k, v, depth + 1) for k, v in children if isinstance(v, dict | list))
    # Deepest first: each slice holds the Fragments of the slices below it already.
    for _, parent, key in sorted(cuts, key=lambda cut: -cut[0]):
        parent[key] = orjson.Fragment(orjson.dumps(parent[key], default=_default, option=option))
    return top[0]
