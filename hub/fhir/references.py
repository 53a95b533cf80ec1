"""Literal references in a resource: where they are and which local resource they name.

https://hl7.org/fhir/R4/references.html. Pure functions of the resource JSON, shared by
the write executor (referential integrity, the table of outbound references) and the
feeds (a message whose references name nothing yet waits instead of failing).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from hub.fhir.types import R4_RESOURCE_TYPES

# [type]/[id] or [type]/[id]/_history/[version], relative to the server's base.
_LOCAL = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def references(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(path of the Reference element, its `reference`) for every reference in `resource`,
    contained resources included: paths read `Observation.subject`, `Observation.performer[1]`.

    A Bundle (the resource itself or one inside) is not entered: its references resolve
    against its own entries, not the store. Iterative: a resource may nest deeply.
    """
    if resource.get("resourceType") == "Bundle":
        return
    stack: list[tuple[Any, str]] = [(resource, str(resource.get("resourceType", "")))]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            if value is not resource and value.get("resourceType") == "Bundle":
                continue
            children = []
            for key, item in value.items():
                if key == "reference" and isinstance(item, str):
                    yield where, item
                elif isinstance(item, dict | list):
                    children.append((item, f"{where}.{key}"))
            stack.extend(reversed(children))  # popped in document order
        elif isinstance(value, list):
            stack.extend(
                (item, f"{where}[{i}]")
                for i, item in reversed(list(enumerate(value)))
                if isinstance(item, dict | list)
            )


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


def local_references(
    resource: dict[str, Any], base_url: str = ""
) -> list[tuple[str, str, tuple[str, str]]]:
    """(path, reference, (type, id)) of each reference naming a local resource."""
    out = []
    for where, reference in references(resource):
        target = local_target(reference, base_url)
        if target is not None:
            out.append((where, reference, target))
    return out


def targets(resource: dict[str, Any], base_url: str = "") -> list[tuple[str, str]]:
    """The distinct local resources `resource` references, in order of appearance."""
    return list(dict.fromkeys(t for _, _, t in local_references(resource, base_url)))
