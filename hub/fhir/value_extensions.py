"""The extensions of an extension's own primitive value (`_valueString`, `_valueDateTime`...).

R4 lets every primitive carry extensions, an extension's `value[x]` included
(https://hl7.org/fhir/R4/json.html#primitive): the official CodeSystems put translations
there, and `{"url": ..., "_valueDateTime": {"extension": [data-absent-reason]}}` says that
a date is unknown. The fhir.resources R4B `Extension` model declares no `_value[x]` fields,
so it refuses them as extra inputs, while every other model accepts primitive extensions.

Validation therefore works on a copy of the resource without those elements, and checks
each of them on its own as the primitive extension it is. The copy shares everything that
holds no such element with the resource, and the resource itself is left as it came: what
the server stores is what the client sent.
"""

from __future__ import annotations

from typing import Any

# Extension.value[x] of R4 (https://hl7.org/fhir/R4/extensibility.html#extension), its
# primitive types: the elements the R4B model lacks.
PRIMITIVE_VALUES = frozenset(
    "_value" + t
    for t in [
        "Base64Binary",
        "Boolean",
        "Canonical",
        "Code",
        "Date",
        "DateTime",
        "Decimal",
        "Id",
        "Instant",
        "Integer",
        "Markdown",
        "Oid",
        "PositiveInt",
        "String",
        "Time",
        "UnsignedInt",
        "Uri",
        "Url",
        "Uuid",
    ]
)
_EXTENSIONS = ("extension", "modifierExtension")

# A chain of the containers from the resource down to one: (parent link, key, container).
_Link = tuple[Any, Any, Any]


def split(
    resource_type: str, resource: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """(the resource without the primitive extensions of extension values, those elements
    as (path, value)). The resource itself is returned when it holds none."""
    found: list[tuple[_Link, str, str]] = []  # (the extension's chain, its path, the key)
    stack: list[tuple[Any, str, _Link]] = [(resource, resource_type, (None, None, resource))]
    while stack:
        value, path, link = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(item, dict | list):
                    continue
                if key in _EXTENSIONS and isinstance(item, list):
                    for i, extension in enumerate(item):
                        if isinstance(extension, dict):
                            ext_path = f"{path}.{key}[{i}]"
                            ext_link = ((link, key, item), i, extension)
                            found.extend(
                                (ext_link, ext_path, name)
                                for name in extension
                                if name in PRIMITIVE_VALUES
                            )
                stack.append((item, f"{path}.{key}", (link, key, item)))
        else:
            for i, item in enumerate(value):
                if isinstance(item, dict | list):
                    stack.append((item, f"{path}[{i}]", (link, i, item)))
    if not found:
        return resource, []

    # Copy the containers on the way to each such extension (once each), then take the
    # elements out of the copies: an element found inside another is thus taken out of the
    # copy that the outer one's check sees.
    copies: dict[int, Any] = {}

    def copy_of(link: _Link) -> Any:
        chain = []  # from this container up to the first one already copied (or the root)
        while link is not None and id(link[2]) not in copies:
            chain.append(link)
            link = link[0]
        for parent, key, container in reversed(chain):
            copy = dict(container) if isinstance(container, dict) else list(container)
            copies[id(container)] = copy
            if parent is not None:
                copies[id(parent[2])][key] = copy
        return copies[id(chain[0][2])] if chain else copies[id(link[2])]

    for link, _, _ in found:
        copy_of(link)
    removed = [(f"{path}.{name}", copy_of(link).pop(name)) for link, path, name in found]
    return copies[id(resource)], removed
