"""Literal references in a resource: where they are and which local resource they name.

https://hl7.org/fhir/R4/references.html. Pure functions of the resource JSON, shared by
the write executor (referential integrity, the table of outbound references) and the
feeds (a message whose references name nothing yet waits instead of failing).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from hub.fhir.types import R4_RESOURCE_TYPES

# [type]/[id] or [type]/[id]/_history/[version], relative to the server's base.
_LOCAL = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def references(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(path of the Reference element, its `reference`) for every reference in `resource`,
    contained resources included, in document order: paths read `Observation.subject`,
    `Observation.performer[1]`.

    A Bundle (the resource itself or one inside) is not entered: its references resolve
    against its own entries, not the store. Iterative: a resource may nest deeply. Every
    write walks its resource, so a path is spelled out only for an element holding a
    reference: the others keep just their step and their parent's.
    """
    if resource.get("resourceType") == "Bundle":
        return
    root = str(resource.get("resourceType", ""))
    stack: list[tuple[Any, _Step | None]] = [(resource, None)]
    while stack:
        value, step = stack.pop()
        if isinstance(value, dict):
            if step is not None and value.get("resourceType") == "Bundle":
                continue
            reference = value.get("reference")
            if isinstance(reference, str):
                yield _spelled(root, step), reference
            children = [
                (item, (step, key))
                for key, item in value.items()
                if isinstance(item, dict | list) and key != "reference"
            ]
        else:
            children = [
                (item, (step, index))
                for index, item in enumerate(value)
                if isinstance(item, dict | list)
            ]
        stack.extend(reversed(children))  # popped in document order


# A step down from the resource: (the parent's step, element name or list index).
_Step = tuple[Any, str | int]


def _spelled(root: str, step: _Step | None) -> str:
    parts: list[str] = []
    while step is not None:
        step, key = step
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return root + "".join(reversed(parts))


def local_target(reference: str, base_url: str = "") -> tuple[str, str] | None:
    """The (type, id) a literal reference names in this server, or None for what is not
    checked: contained (`#x`), `urn:uuid:`/`urn:oid:`, conditional (`Patient?...`), and
    absolute URLs of other servers. `base_url` makes `[base]/Patient/1` local too."""
    if base_url and reference.startswith(base_url + "/"):
        reference = reference[len(base_url) + 1 :]
    found = _LOCAL.fullmatch(reference)
    if found is None or found.group(1) not in R4_RESOURCE_TYPES:
        return None
    return found.group(1), found.group(2)


# (path, reference as written, (type, id) it names) of one local reference.
Found = tuple[str, str, tuple[str, str]]


def local_references(resource: dict[str, Any], base_url: str = "") -> list[Found]:
    """(path, reference, (type, id)) of each reference naming a local resource."""
    out = []
    for where, reference in references(resource):
        target = local_target(reference, base_url)
        if target is not None:
            out.append((where, reference, target))
    return out


def targets(resource: dict[str, Any], base_url: str = "") -> list[tuple[str, str]]:
    """The distinct local resources `resource` holds against deletion, in order.

    A version reference (`Patient/1/_history/2`) holds none: the version it names stays
    readable in history after a delete (a feed's Provenance names versions of its targets).
    """
    return held(local_references(resource, base_url))


def held(found: Sequence[Found]) -> list[tuple[str, str]]:
    """`targets` of references found already."""
    return list(dict.fromkeys(t for _, reference, t in found if "/_history/" not in reference))
