"""Checks of a resource's content made before its model validation: how deep its elements
nest, and that its strings hold no control characters.

Both walk the parsed JSON with an explicit stack, so nothing here recurses however deep a
resource is: the model validation that follows does (about eight Python frames per element
step), and it only runs on resources this walk let through.
"""

from __future__ import annotations

import re
from typing import Any

from hub.errors import Invalid, Issue

# R4 strings hold no characters below U+0020 other than tab, CR and LF
# (https://hl7.org/fhir/R4/datatypes.html#string). PostgreSQL's jsonb cannot store U+0000.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def control_character(text: str) -> str | None:
    """The first control character of `text` that R4 strings may not hold, if any."""
    found = _CONTROL.search(text)
    return found.group() if found else None


def escaped(text: str) -> str:
    """`text` with its control characters written as JSON escapes, to show it in a message."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _control(path: str, found: str) -> Invalid:
    message = (
        f"{path}: holds the control character U+{ord(found):04X}; FHIR strings may hold no "
        "control characters other than tab, carriage return and line feed"
    )
    return Invalid(message, issues=[Issue("value", message, expression=(path,))])


def _too_deep(path: str, max_depth: int) -> Invalid:
    message = (
        f"{path}: elements nest more than {max_depth} deep, "
        f"deeper than this server accepts (at most {max_depth} steps below the resource)"
    )
    return Invalid(message, issues=[Issue("too-costly", message, expression=(path,))])


def check(resource_type: str, resource: dict[str, Any], max_depth: int) -> tuple[int, bool]:
    """Raise `Invalid` for an element deeper than `max_depth` path steps (`Patient.name[0]
    .family` is 2) or for a string or element name holding a control character; return the
    depth of the deepest element, and whether an element name may begin with `_value` (a
    primitive extension of a value[x], see `value_extensions`)."""
    deepest, clean, value_extension = _scan(resource, max_depth)
    if not clean:
        _locate(resource_type, resource, max_depth)
    return deepest, value_extension


def nesting(value: Any, limit: int) -> int:
    """How many objects deep `value` nests (for a resource, its deepest element's steps),
    counted no further than `limit` + 1."""
    return _scan(value, limit)[0]


def _scan(resource: Any, max_depth: int) -> tuple[int, bool, bool]:
    """(deepest element, whether the resource passes, whether a name may begin with
    `_value`): the walk every write makes, so it builds no paths and searches all strings at
    once; `_locate` walks again to name what failed."""
    deepest = 0
    strings: list[str] = []
    # (a container, the depth of the element holding it): a dict's keys are one deeper.
    stack: list[tuple[Any, int]] = [(resource, 0)]
    while stack:
        value, held = stack.pop()
        if isinstance(value, dict):
            if not value:
                continue
            depth = held + 1
            if depth > max_depth:
                return depth, False, False
            deepest = max(deepest, depth)
            strings.extend(value)
            items: Any = value.values()
        else:
            depth = held
            items = value
        for item in items:
            if isinstance(item, str):
                strings.append(item)
            elif isinstance(item, dict | list):
                stack.append((item, depth))
    text = " ".join(strings)
    # Names and strings alike: a string holding " _value" only costs a closer look.
    return deepest, _CONTROL.search(text) is None, text.startswith("_value") or " _value" in text


def _locate(resource_type: str, resource: dict[str, Any], max_depth: int) -> None:
    """Raise `Invalid` naming the element `_scan` found at fault."""
    stack: list[tuple[Any, str, int]] = [(resource, resource_type, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            found = _CONTROL.search(value)
            if found:
                raise _control(path, found.group())
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth) for i, item in enumerate(value))
        elif isinstance(value, dict) and value:
            depth += 1
            if depth > max_depth:
                raise _too_deep(f"{path}.{escaped(next(iter(value)))}", max_depth)
            for key, item in value.items():
                found = _CONTROL.search(key)
                if found:
                    raise _control(f"{path}.{escaped(key)}", found.group())
                stack.append((item, f"{path}.{key}", depth))
