"""Declarative mappings: source fields to FHIR elements, read from YAML files in `mappings/`.

A mapping is data. It names, for each resource a record produces, the
element paths to fill and where each value comes from: a source field
(converted to a FHIR type: date, dateTime, decimal, integer, boolean, code
through a lookup table, Coding, reference to another mapped resource) or a
constant. The engine is the same for every adapter: an adapter turns its wire
format into records (field name -> text), the mapping turns records into
resources, and every element filled from a field is remembered as lineage.

Resource ids are deterministic: a UUID derived from the source system, the
resource type and the values of the resource's key fields, so a resent or
corrected record updates the same resource.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from hub.errors import Invalid

_NAMESPACE = uuid.UUID("6f1c1a0e-9d1e-4f5b-8d7a-2b8f0c3e5a91")
_INDEX = re.compile(r"\[\d+\]")
_STEP = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?$")
DEFAULT_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y")
DEFAULT_DATETIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y%m%d%H%M%S",
    "%Y%m%d%H%M",
    "%Y-%m-%d",
)


class MappingError(Invalid):
    """A record the mapping cannot turn into FHIR; `field` names the source field."""

    def __init__(self, message: str, field_name: str | None = None) -> None:
        super().__init__(message, expression=(field_name,) if field_name else ())
        self.field = field_name


def resource_id(source: str, resource_type: str, key: Sequence[str]) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{source}|{resource_type}|{'|'.join(key)}"))


@dataclass(frozen=True)
class Element:
    path: str
    field: str | None = None
    value: Any = None
    type: str = "string"
    required: bool = False
    formats: tuple[str, ...] = ()
    lookup: str | None = None
    resource: str | None = None  # reference target type
    key: tuple[str, ...] = ()  # reference: fields whose values make the target's id
    when: Mapping[str, Any] | None = None
    present: Any = None  # a constant chosen by whether the field has a value
    absent: Any = None
    # A reference: the message waits until its target has arrived (default: when required).
    wait: bool = False


@dataclass(frozen=True)
class ResourceMap:
    name: str
    type: str
    id: tuple[str, ...]
    elements: tuple[Element, ...]
    when: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Mapping_:
    name: str
    adapter: str
    version: str
    source: str
    key: tuple[str, ...]
    resources: tuple[ResourceMap, ...]
    lookups: Mapping[str, Mapping[str, Any]]
    options: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    description: str = ""


@dataclass
class Mapped:
    """What one record became: resources (with ids) and, per resource, element <- field."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[list[tuple[str, str]]] = field(default_factory=list)
    order_key: str | None = None
    # Per resource, the element paths ("Observation.subject") whose reference must have
    # arrived before the resource is written (the elements marked `wait`).
    awaits: list[list[str]] = field(default_factory=list)
    # Per resource (or empty: none for all): its mapped elements go over the stored
    # content (`overlay`), and the top-level elements the stored version keeps (`keep`).
    overlay: list[bool] = field(default_factory=list)
    keep: list[tuple[str, ...]] = field(default_factory=list)
    # Merges the record asks for: (type, merged id, survivor id, source field).
    merges: list[tuple[str, str, str, str]] = field(default_factory=list)


def as_tuple(value: Any) -> tuple[str, ...]:
    """A mapping file's one-or-many value (`key: PID-3.1`, `key: [a, b]`) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str | int):
        return (str(value),)
    return tuple(str(v) for v in value)


def load_mapping(path: Path) -> Mapping_:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a mapping file holds a YAML mapping")
    try:
        resources = []
        for r in data["resources"]:
            elements = []
            for element_path, spec in r["elements"].items():
                spec = spec if isinstance(spec, dict) else {"field": spec}
                elements.append(
                    Element(
                        path=element_path,
                        field=spec.get("field"),
                        value=spec.get("value"),
                        type=spec.get("type", "string"),
                        required=bool(spec.get("required", False)),
                        formats=as_tuple(spec.get("formats") or spec.get("format")),
                        lookup=spec.get("lookup"),
                        resource=spec.get("resource"),
                        key=as_tuple(spec.get("key")),
                        when=spec.get("when"),
                        present=spec.get("present"),
                        absent=spec.get("absent"),
                        wait=bool(spec.get("wait", spec.get("required", False))),
                    )
                )
            resources.append(
                ResourceMap(
                    name=r.get("name", r["type"].lower()),
                    type=r["type"],
                    id=as_tuple(r["id"]),
                    elements=tuple(elements),
                    when=r.get("when"),
                )
            )
        return Mapping_(
            name=data["name"],
            adapter=data["adapter"],
            version=str(data.get("version", "1")),
            source=str(data.get("source", data["name"])),
            key=as_tuple(data.get("key")),
            resources=tuple(resources),
            lookups=data.get("lookups", {}),
            options=data.get("options", {}),
            path=path,
            description=data.get("description", ""),
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: incomplete mapping ({e})") from None


def _set(target: dict[str, Any], path: str, value: Any) -> None:
    if isinstance(value, dict | list):
        # A constant or lookup value from the mapping: deeper paths may fill it in, so each
        # resource gets its own copy and the mapping stays as loaded.
        value = copy.deepcopy(value)
    steps = path.split(".")
    node: Any = target
    for i, step in enumerate(steps):
        m = _STEP.match(step)
        if not m:
            raise ValueError(f"bad element path '{path}'")
        name, index = m["name"], m["index"]
        last = i == len(steps) - 1
        if index is None:
            if last:
                node[name] = value
            else:
                node = node.setdefault(name, {})
        else:
            items = node.setdefault(name, [])
            position = int(index)
            while len(items) <= position:
                items.append({} if not last else None)
            if last:
                items[position] = value
            else:
                if items[position] is None:
                    items[position] = {}
                node = items[position]


_HOLES: tuple[Any, ...] = (None, {}, [])


def prune(value: Any, holes: tuple[Any, ...] = _HOLES) -> Any:
    """Drop the placeholders left by sparse list indexes and empty containers (and any
    other value among `holes`)."""
    if isinstance(value, dict):
        out = {k: prune(v, holes) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in holes}
    if isinstance(value, list):
        out_list = [prune(v, holes) for v in value]
        return [v for v in out_list if v not in holes]
    return value


def new_resource(source: str, resource_type: str, key: Sequence[str]) -> dict[str, Any]:
    """A resource's start: its type and the id its source and key values make."""
    return {"resourceType": resource_type, "id": resource_id(source, resource_type, key)}


def _matches(when: Mapping[str, Any] | None, record: Mapping[str, str]) -> bool:
    if not when:
        return True
    actual = (record.get(when["field"]) or "").strip()
    if "equals" in when:
        return actual == str(when["equals"])
    if "in" in when:
        return actual in [str(v) for v in when["in"]]
    if "present" in when:
        return bool(actual) == bool(when["present"])
    return True


class Mapper:
    """Applies one mapping to records."""

    def __init__(self, mapping: Mapping_, source: str | None = None) -> None:
        self.mapping = mapping
        self.source = source or mapping.source
        self.timezone = ZoneInfo(str(mapping.options.get("timezone", "UTC")))

    def _convert(self, element: Element, raw: str, record: Mapping[str, str] | None = None) -> Any:
        name = element.field
        kind = element.type
        if element.lookup is not None:
            table = self.mapping.lookups.get(element.lookup)
            if table is None:
                raise MappingError(f"the mapping has no lookup table '{element.lookup}'", name)
            if raw not in table:
                if "*" in table:
                    return table["*"]
                raise MappingError(
                    f"unknown code '{raw}' (table {element.lookup} has "
                    f"{', '.join(map(str, list(table)[:8]))})",
                    name,
                )
            return table[raw]
        if kind == "string":
            return raw
        if kind == "date":
            return self._datetime(element, raw, DEFAULT_DATE_FORMATS).strftime("%Y-%m-%d")
        if kind == "datetime":
            parsed, fmt = self._parse_time(element, raw, DEFAULT_DATETIME_FORMATS)
            if fmt is not None and "%H" not in fmt:
                return parsed.strftime("%Y-%m-%d")  # a date alone stays a date
            if parsed.tzinfo is None:
                # FHIR wants a zone on a time; the feed's zone comes from the mapping.
                parsed = parsed.replace(tzinfo=self.timezone)
            return parsed.isoformat().replace("+00:00", "Z")
        if kind in ("decimal", "integer"):
            try:
                number = Decimal(raw)
            except InvalidOperation:
                raise MappingError(f"'{raw}' is not a number", name) from None
            if kind == "integer":
                if number != number.to_integral_value():
                    raise MappingError(f"'{raw}' is not a whole number", name)
                return int(number)
            exponent = number.as_tuple().exponent
            return float(number) if isinstance(exponent, int) and exponent < 0 else int(number)
        if kind == "boolean":
            lowered = raw.lower()
            if lowered in ("true", "t", "yes", "y", "1"):
                return True
            if lowered in ("false", "f", "no", "n", "0"):
                return False
            raise MappingError(f"'{raw}' is not a boolean", name)
        if kind == "reference":
            if element.resource is None:
                raise MappingError("a reference element needs `resource`", name)
            key = [raw]
            if element.key:  # the target's id is made of several fields
                key = [((record or {}).get(k) or "").strip() for k in element.key]
                for k, value in zip(element.key, key, strict=True):
                    if not value:
                        raise MappingError("the reference key field is empty", k)
            target = resource_id(self.source, element.resource, key)
            return {"reference": f"{element.resource}/{target}"}
        raise MappingError(f"unknown conversion type '{kind}'", name)

    def _datetime(self, element: Element, raw: str, defaults: Sequence[str]) -> datetime:
        return self._parse_time(element, raw, defaults)[0]

    def _parse_time(
        self, element: Element, raw: str, defaults: Sequence[str]
    ) -> tuple[datetime, str | None]:
        formats = element.formats or defaults
        for fmt in formats:
            try:
                return datetime.strptime(raw, fmt), fmt
            except ValueError:
                continue
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")), None
        except ValueError:
            pass
        raise MappingError(
            f"'{raw}' is not a {'date' if element.type == 'date' else 'date-time'} "
            f"in the format {' or '.join(formats)}",
            element.field,
        )

    def order_key(self, record: Mapping[str, str]) -> str | None:
        """The subject a record is about (the mapping's `key` fields), for in-order
        application: a function of the record alone, so the message store can keep it at
        receipt without mapping the record."""
        if not self.mapping.key:
            return None
        return "|".join((record.get(k) or "").strip() for k in self.mapping.key)

    def map(self, record: Mapping[str, str]) -> Mapped:
        out = Mapped(order_key=self.order_key(record))
        for rmap in self.mapping.resources:
            if not _matches(rmap.when, record):
                continue
            key = []
            for name in rmap.id:
                value = (record.get(name) or "").strip()
                if not value:
                    raise MappingError("the key field is empty", name)
                key.append(value)
            resource = new_resource(self.source, rmap.type, key)
            lineage: list[tuple[str, str]] = []
            awaits: list[str] = []
            for element in rmap.elements:
                if not _matches(element.when, record):
                    continue
                if element.field is None:
                    _set(resource, element.path, element.value)
                    continue
                if element.field not in record and element.absent is None:
                    if element.required:
                        raise MappingError("the required field is missing", element.field)
                    continue
                raw = (record.get(element.field) or "").strip()
                if element.present is not None or element.absent is not None:
                    chosen = element.present if raw else element.absent
                    if chosen is not None:
                        _set(resource, element.path, chosen)
                        lineage.append(
                            (f"{rmap.type}.{_INDEX.sub('', element.path)}", element.field)
                        )
                    continue
                if not raw:
                    if element.required:
                        raise MappingError("the required field is empty", element.field)
                    continue
                _set(resource, element.path, self._convert(element, raw, record))
                path = f"{rmap.type}.{_INDEX.sub('', element.path)}"
                lineage.append((path, element.field))
                if element.wait and element.type == "reference":
                    awaits.append(path.removesuffix(".reference"))
            out.resources.append(prune(resource))
            out.lineage.append(lineage)
            out.awaits.append(awaits)
        return out


def discover(root: Path) -> dict[str, Mapping_]:
    """Every mapping file under `root` (`<adapter>/<name>.yaml`), by name."""
    found: dict[str, Mapping_] = {}
    if not root.exists():
        return found
    for path in sorted(root.glob("*/*.yaml")) + sorted(root.glob("*/*.yml")):
        mapping = load_mapping(path)
        found[mapping.name] = mapping
    return found
