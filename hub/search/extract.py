"""Index extraction: a resource's search values, from each parameter's FHIRPath expression.

Runs at write time, inside the write's transaction, so the index always
describes the version that is current.
"""

from __future__ import annotations

from typing import Any

from hub.search.registry import Registry
from hub.store.repository import TokenRow


def _tokens(value: Any) -> list[tuple[str | None, str | None]]:
    """Token pairs (system, code) of one extracted value, by its FHIR data type."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str | int):
        return [(None, str(value))]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "system" not in value):  # CodeableConcept
        return [p for c in value.get("coding", []) for p in _tokens(c)]
    if "value" in value and "code" not in value:  # Identifier, ContactPoint
        return [(value.get("system"), str(value["value"]))]
    if "code" in value:  # Coding, Quantity
        return [(value.get("system"), str(value["code"]))]
    return []


def extract_tokens(registry: Registry, resource: dict[str, Any]) -> list[TokenRow]:
    rows: list[TokenRow] = []
    seen: set[TokenRow] = set()
    for param in registry.indexed(resource["resourceType"]):
        if param.type != "token":
            continue
        for value in param.evaluate(resource):
            for system, code in _tokens(value):
                row = TokenRow(param.code, system, code)
                if row not in seen:
                    seen.add(row)
                    rows.append(row)
    return rows
