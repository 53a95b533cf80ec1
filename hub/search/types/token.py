"""token: `code`, `system|code`, `|code`, `system|`; `:not`, `:text`, `:of-type`.

https://hl7.org/fhir/R4/search.html#token. What a value's tokens are depends
on its R4 type: the codings of a CodeableConcept, a Coding's code, an
Identifier's or ContactPoint's value, a Quantity's code, a primitive itself.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hub.errors import Invalid
from hub.search.types import string
from hub.search.types.base import Rows
from hub.search.values import split_unescaped, unescape

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_token"
MODIFIERS = frozenset({"not", "text", "missing", "of-type"})
ONE_ROW_PER_VALUE = False
QUANTITIES = frozenset(
    {"Quantity", "SimpleQuantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity"}
)
Pair = tuple[str | None, str | None]


def parse_token(value: str) -> Pair:
    """`code`, `system|code`, `|code` (no system: '') and `system|` (any code)."""
    parts = split_unescaped(value, "|", maxsplit=1)
    if len(parts) == 1:
        return None, unescape(parts[0])
    return unescape(parts[0]), (unescape(parts[1]) or None)


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> Any:
    if modifier == "text":  # searched in the texts of the codes, as a string
        return string.parse(param, None, raw, name)
    system, code = parse_token(raw)
    if system is None and not code:
        raise Invalid(f"Search parameter '{name}' has an empty value", expression=(name,))
    if modifier == "of-type":
        pieces = (code or "").split("|")
        if system is None or len(pieces) != 2:
            raise Invalid(f"'{name}' takes system|code|value", expression=(name,))
        return system, f"{pieces[0]}|{pieces[1]}"
    return system, code


def _codings(value: dict[str, Any]) -> list[Pair]:
    return [p for c in value.get("coding", []) for p in pairs(c, "Coding")]


def pairs(value: Any, element_type: str | None) -> list[Pair]:
    """Token pairs (system, code) of one value, by its R4 type."""
    if element_type is None:
        return shaped_pairs(value)
    if element_type == "boolean":
        return [(None, "true" if value else "false")] if isinstance(value, bool) else []
    if not isinstance(value, dict):
        return [(None, str(value))] if isinstance(value, str | int | Decimal) else []
    if element_type == "CodeableConcept":
        return _codings(value)
    if element_type in ("Identifier", "ContactPoint"):
        held = value.get("value")
        return [(value.get("system"), str(held))] if held is not None else []
    if element_type == "Coding" or element_type in QUANTITIES:
        code = value.get("code")
        return [(value.get("system"), str(code))] if code is not None else []
    return []  # no tokens in other types (a Period, a Reference)


def shaped_pairs(value: Any) -> list[Pair]:
    # A value of unknown type (from an expression fhirpathpy evaluates, such as an extension's
    # value): its type guessed from its keys.
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str | int | Decimal):
        return [(None, str(value))]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "system" not in value and "value" not in value):
        return [p for c in value.get("coding", []) for p in shaped_pairs(c)]  # CodeableConcept
    if "value" in value and "code" not in value:  # Identifier, ContactPoint
        return [(value.get("system"), str(value["value"]))]
    if "code" in value:  # Coding, Quantity
        return [(value.get("system"), str(value["code"]))]
    return []


def _texts(value: Any, element_type: str | None) -> list[str]:
    """The texts `:text` searches: a concept's text and its codings' displays."""
    if not isinstance(value, dict):
        return []
    if element_type not in (None, "CodeableConcept", "Coding", "Identifier"):
        return []
    texts = [value["text"]] if isinstance(value.get("text"), str) else []
    if isinstance(value.get("display"), str):
        texts.append(value["display"])
    for coding in value.get("coding", []):
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            texts.append(coding["display"])
    if isinstance(value.get("type"), dict) and element_type in (None, "Identifier"):
        texts.extend(_texts(value["type"], None if element_type is None else "CodeableConcept"))
    return texts


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    code = param.code
    for system, token in pairs(value, element_type):
        rows.add(TABLE, param=code, system=system, code=token)
    for text in _texts(value, element_type):
        string.add_text(rows, f"{code}:text", text)
    # `:of-type`: an Identifier's type with its value.
    if (
        element_type in (None, "Identifier")
        and isinstance(value, dict)
        and isinstance(value.get("type"), dict)
        and "value" in value
    ):
        concept = None if element_type is None else "CodeableConcept"
        for system, type_code in pairs(value["type"], concept):
            rows.add(
                TABLE, param=f"{code}:of-type", system=system, code=f"{type_code}|{value['value']}"
            )


def component(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    return [{"c2_system": s, "c2_code": c} for s, c in pairs(value, element_type)]


def sort_column(descending: bool) -> str:
    return "code"


def row_order(descending: bool) -> None:
    return None
