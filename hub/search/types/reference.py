"""reference: `Type/id`, a bare id (`:Type` names the type), an absolute URL.

https://hl7.org/fhir/R4/search.html#reference. Indexed from Reference,
canonical and uri elements as (target type, target id, url).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.search.types.base import MAX_STRING, Rows, non_empty
from hub.search.values import unescape

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_reference"
MODIFIERS = frozenset({"missing"})  # and a target type, checked by the parser
ONE_ROW_PER_VALUE = False
REFERENCES = frozenset({"Reference", "canonical", "uri", "url", "string"})


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> str:
    value = unescape(non_empty(raw, name))
    if modifier and modifier != "missing" and "/" not in value:
        return f"{modifier}/{value}"  # `subject:Patient=123` is `subject=Patient/123`
    return value


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


def _typed(value: Any, element_type: str | None, target: str | None = None) -> Any:
    # Unknown types (an extension's value[x]) are read as a Reference or a canonical.
    if element_type is not None and element_type not in REFERENCES:
        return None
    return reference(value, target)


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    found = _typed(value, element_type, target)
    if found is not None:
        rows.add(
            TABLE,
            param=param.code,
            target_type=found[0],
            target_id=found[1],
            url=found[2][:MAX_STRING],
        )


def component(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    found = _typed(value, element_type)
    return [{"c2_code": f"{found[0]}/{found[1]}"}] if found and found[0] else []


def sort_column(descending: bool) -> str:
    return "target_id"


def row_order(descending: bool) -> None:
    return None
