"""Serialising resources to JSON bytes, however deeply they nest.

orjson refuses values nested more than 254 containers deep, and a resource within
`max_resource_depth` (two containers per element step when the element repeats) can nest
deeper. Such values are serialised in slices: every container `_SLICE` levels below the
previous slice is serialised on its own and spliced in as an `orjson.Fragment`, which gives
exactly the bytes orjson would give without its limit.
"""

from __future__ import annotations

from typing import Any

import orjson

_SLICE = 128


def dumps(value: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        # Too deep, or not serialisable at all: then the sliced attempt raises the same error.
        return orjson.dumps(_sliced(value, option), option=option)


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
        parent[key] = orjson.Fragment(orjson.dumps(parent[key], option=option))
    return top[0]
