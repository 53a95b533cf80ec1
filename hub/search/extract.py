"""Index extraction: a resource's search values, typed, from each parameter's expression.

Runs at write time, inside the write's transaction, so the index always
describes the current version. Rows go to one table per search parameter
type; `:text` on tokens is served by string rows named `code:text`, and
`:of-type` on identifiers by token rows named `identifier:of-type`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from hub.search.registry import Registry, SearchParam
from hub.search.values import HIGHEST, LOWEST, date_range, normalise
from hub.store.repository import IndexRows

_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
MAX_STRING = 500
log = logging.getLogger(__name__)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    is_name = any(k in value for k in ("family", "given", "prefix", "suffix"))
    keys = _NAME_PARTS if is_name else _ADDRESS_PARTS
    out: list[str] = []
    for key in keys:
        item = value.get(key)
        if isinstance(item, list):
            out.extend(i for i in item if isinstance(i, str))
        elif isinstance(item, str):
            out.append(item)
    if not out and isinstance(value.get("text"), str):
        out.append(value["text"])
    return out


def tokens(value: Any) -> list[tuple[str | None, str | None]]:
    """Token pairs (system, code) of one value, by its FHIR data type."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str | int | Decimal):
        return [(None, str(value))]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "system" not in value and "value" not in value):
        return [p for c in value.get("coding", []) for p in tokens(c)]  # CodeableConcept
    if "value" in value and "code" not in value:  # Identifier, ContactPoint
        return [(value.get("system"), str(value["value"]))]
    if "code" in value:  # Coding, Quantity
        return [(value.get("system"), str(value["code"]))]
    return []


def _token_texts(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return []
    texts = [value["text"]] if isinstance(value.get("text"), str) else []
    if isinstance(value.get("display"), str):
        texts.append(value["display"])
    for coding in value.get("coding", []):
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            texts.append(coding["display"])
    if isinstance(value.get("type"), dict):
        texts.extend(_token_texts(value["type"]))
    return texts


def dates(value: Any) -> list[tuple[datetime, datetime]]:
    if isinstance(value, str):
        found = date_range(value)
        return [found] if found else []
    if not isinstance(value, dict):
        return []
    if "start" in value or "end" in value:  # Period
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        low, high = start[0] if start else LOWEST, end[1] if end else HIGHEST
        if start and high < low:
            # An end before the start (in UTC; the model does not check per-1): the range is
            # the start's, so that low <= high, which the searches' bounds rely on.
            high = start[1]
        return [(low, high)]
    if "event" in value or "repeat" in value:  # Timing
        ranges = [r for e in value.get("event", []) for r in dates(e)]
        bounds = value.get("repeat", {}).get("boundsPeriod")
        if bounds:
            ranges.extend(dates(bounds))
        if ranges:
            return [(min(r[0] for r in ranges), max(r[1] for r in ranges))]
    return []


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    return None


def _quantity(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict) and _number(value.get("value")) is not None:
        return {
            "value": _number(value["value"]),
            "system": value.get("system"),
            "code": value.get("code") or value.get("currency"),
            "unit": value.get("unit"),
        }
    return None


def reference(value: Any, target: str | None = None) -> tuple[str | None, str, str] | None:
    """(target type, target id, url) of a Reference or canonical; None when it is neither."""
    ref = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(ref, str) or not ref or ref.startswith("#"):
        return None
    path = ref.split("|")[0]
    segments = path.split("/")
    if "_history" in segments:
        segments = segments[: segments.index("_history")]
    if len(segments) >= 2 and segments[-2][:1].isupper():
        kind, rid = segments[-2], segments[-1]
        if target is not None and kind != target:
            return None
        return kind, rid, path
    if target is not None:
        return None
    return None, segments[-1], path


class _Rows:
    def __init__(self, resource_type: str, resource_id: str) -> None:
        self.key = {"res_type": resource_type, "res_id": resource_id}
        self.rows: IndexRows = {}
        self.seen: set[tuple[Any, ...]] = set()

    def add(self, table: str, **values: Any) -> None:
        # Index columns hold MAX_STRING characters (PostgreSQL refuses more): longer ones are cut.
        values = {k: v[:MAX_STRING] if isinstance(v, str) else v for k, v in values.items()}
        signature = (table, *values.values())
        if signature not in self.seen:
            self.seen.add(signature)
            self.rows.setdefault(table, []).append({**self.key, **values})


def _values(param: SearchParam, resource: dict[str, Any]) -> Iterable[tuple[Any, str | None]]:
    for part in param.parts:
        for value in part.evaluate(resource):
            yield value, part.target


def _add(
    rows: _Rows,
    param: SearchParam,
    code: str,
    kind: str,
    value: Any,
    target: str | None,
) -> None:
    if kind == "string":
        for text in _strings(value):
            rows.add(
                "search_string",
                param=code,
                value=normalise(text)[:MAX_STRING],
                exact=text[:MAX_STRING],
            )
    elif kind == "token":
        for system, token in tokens(value):
            rows.add("search_token", param=code, system=system, code=token)
        for text in _token_texts(value):
            rows.add(
                "search_string",
                param=f"{code}:text",
                value=normalise(text)[:MAX_STRING],
                exact=text[:MAX_STRING],
            )
        if isinstance(value, dict) and isinstance(value.get("type"), dict) and "value" in value:
            for system, type_code in tokens(value["type"]):
                rows.add(
                    "search_token",
                    param=f"{code}:of-type",
                    system=system,
                    code=f"{type_code}|{value['value']}",
                )
    elif kind == "date":
        for low, high in dates(value):
            rows.add("search_date", param=code, low=low, high=high)
    elif kind == "number":
        number = _number(value)
        if number is not None:
            rows.add("search_number", param=code, value=number)
    elif kind == "quantity":
        quantity = _quantity(value)
        if quantity is not None:
            rows.add("search_quantity", param=code, **quantity)
        elif isinstance(value, dict) and ("low" in value or "high" in value):  # Range
            for bound in ("low", "high"):
                q = _quantity(value.get(bound))
                if q is not None:
                    rows.add("search_quantity", param=code, **q)
    elif kind == "reference":
        found = reference(value, target)
        if found is not None:
            rows.add(
                "search_reference",
                param=code,
                target_type=found[0],
                target_id=found[1],
                url=found[2][:MAX_STRING],
            )
    elif kind == "uri" and isinstance(value, str):
        rows.add("search_uri", param=code, value=value[:MAX_STRING])


def _component_row(kind: str, value: Any) -> list[dict[str, Any]]:
    """The second component's columns of a composite row."""
    if kind == "quantity":
        q = _quantity(value)
        return (
            [{"c2_value": q["value"], "c2_system": q["system"], "c2_code": q["code"]}] if q else []
        )
    if kind == "date":
        return [{"c2_low": low, "c2_high": high} for low, high in dates(value)]
    if kind == "string":
        return [{"c2_text": normalise(t)[:MAX_STRING]} for t in _strings(value)]
    if kind == "number":
        number = _number(value)
        return [{"c2_value": number}] if number is not None else []
    if kind == "reference":
        found = reference(value)
        return [{"c2_code": f"{found[0]}/{found[1]}"}] if found and found[0] else []
    return [{"c2_system": s, "c2_code": c} for s, c in tokens(value)]


# Every composite row names every column: a resource's rows are inserted together, and
# composites of different kinds (a quantity, a date) fill different ones.
_NO_SECOND = dict.fromkeys(("c2_system", "c2_code", "c2_value", "c2_low", "c2_high", "c2_text"))


def _composite(rows: _Rows, param: SearchParam, resource: dict[str, Any]) -> None:
    first, second = param.components
    for i, part in enumerate(param.parts):
        for element in part.evaluate(resource):
            if not isinstance(element, dict):
                continue
            heads = [t for p in first.per_part[i] for v in p.evaluate(element) for t in tokens(v)]
            tails = [
                row
                for p in second.per_part[i]
                for v in p.evaluate(element)
                for row in _component_row(second.type, v)
            ]
            for system, code in heads:
                for tail in tails:
                    rows.add(
                        "search_composite",
                        param=param.code,
                        c1_system=system,
                        c1_code=code,
                        **{**_NO_SECOND, **tail},
                    )


def extract(registry: Registry, resource: dict[str, Any]) -> IndexRows:
    rows = _Rows(resource["resourceType"], resource["id"])
    for param in registry.indexed(resource["resourceType"]):
        try:
            if param.type == "composite":
                _composite(rows, param, resource)
                continue
            for value, target in _values(param, resource):
                _add(rows, param, param.code, param.type, value, target)
        except Exception as e:
            if param.url is None:  # a shipped definition: a bug to surface
                raise
            # A stored SearchParameter's expression must not make the resource unwritable.
            log.warning("search parameter %s failed on %s: %s", param.url, rows.key, e)
    return rows.rows
