"""Mappings of tree records (HL7 v2): message maps built from segment and datatype maps.

The format is the CSV mapping format (`hub.ingest.mapping`, docs/adapters.md)
with what trees need (docs/hl7v2-mappings.md):

- `field` names a place in the tree (`PID-5`, `PID-3.4.2`, `OBX-5`); in a
  datatype map, a place in the value (`1`, `4.2`);
- a path ending in `[*]` takes every repetition of the field, one list item each
  (`identifier[*]: {field: PID-3, datatype: CX}`);
- `datatype: CX` builds the element with the datatype map `datatypes/CX.yaml`;
  a datatype map that names a `resource` (XCN -> Practitioner, PL -> Location)
  makes that resource, and the element refers to it;
- `each: NK1` with nested `elements` makes one list item per segment that
  belongs to the current one (every NK1 after the PID: one `contact`); on a
  resource, `each: OBX` makes one resource per segment;
- a message map lists resources by `use: <segment map>` (`segments/*.yaml`),
  each possibly changed in place; `tables/*.yaml` are code tables shared by all;
- a message map names the messages it takes (`messages: [ADT^A01, ORU^R01^ORU_R01,
  ADT^*]`); a source file (`sources/*.yaml`, `source: LAB/NORTH`) changes or adds
  element maps, resources (a Z-segment map), tables and options for one sender.

Lineage keeps list positions and v2 places: `Patient.name[1].family <- PID-5[2].1`.
A segment the chosen map reads nothing from is kept in the lineage of the
message's first resource (`Patient (not mapped) <- ZPI`), so nothing is dropped
unseen; the raw message is stored anyway.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path as FilePath
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from hub.ingest.mapping import Mapped, MappingError, as_tuple, new_resource, prune, resource_id
from hub.ingest.mapping_tree import Path, Repetition, Segment, Tree, text_of

_INDEX = re.compile(r"\[\d+\]")
_STEP = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+|\*)\])?$")
_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,4}))?(?P<tz>[+-]\d{4})?$"
)
_HL7_TABLE = re.compile(r"^HL7(\d{4})$", re.IGNORECASE)
_SN = re.compile(r"^(?P<cmp><=|>=|<>|<|>|=)?\s*(?P<num>[+-]?\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Element:
    path: str
    field: str | None = None
    value: Any = None
    type: str = "string"
    lookup: str | None = None
    datatype: str | None = None
    required: bool = False
    when: Mapping[str, Any] | None = None
    present: Any = None
    absent: Any = None
    resource: str | None = None
    key: tuple[str, ...] = ()
    wait: bool = False
    each: str | None = None
    until: tuple[str, ...] = ()
    elements: tuple[Element, ...] = ()


@dataclass(frozen=True)
class ResourceMap:
    name: str
    type: str
    id: tuple[str, ...]
    elements: tuple[Element, ...]
    segment: str | None = None  # the anchor: fields of other segments are read from it
    each: bool = False  # one resource per anchor segment
    when: Mapping[str, Any] | None = None
    overlay: bool = False  # the elements go over the stored resource (hub.ingest.reconcile)
    keep: tuple[str, ...] = ()  # top-level elements the stored version keeps
    merge_into: tuple[str, ...] = ()  # `merge: {into: key}`: retired into that resource


@dataclass(frozen=True)
class Datatype:
    name: str
    elements: tuple[Element, ...]
    resource: str | None = None  # the datatype makes a resource of this type
    id: tuple[str, ...] = ()


@dataclass(frozen=True)
class MessageMap:
    name: str
    version: str
    messages: tuple[str, ...]
    resources: tuple[ResourceMap, ...]
    key: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    adapter: str = "hl7v2"
    source: str = ""
    path: FilePath | None = None


@dataclass(frozen=True)
class SourceMap:
    """One sender's changes: element maps and resources, tables, options."""

    source: str
    version: str
    resources: tuple[dict[str, Any], ...]
    tables: Mapping[str, Mapping[str, Any]]
    options: Mapping[str, Any]
    name: str


def _element(path: str, spec: Any) -> Element:
    if not isinstance(spec, dict):
        spec = {"field": str(spec)}
    nested = spec.get("elements") or {}
    return Element(
        path=path,
        field=str(spec["field"]) if spec.get("field") is not None else None,
        value=spec.get("value"),
        type=str(spec.get("type", "string")),
        lookup=spec.get("lookup"),
        datatype=spec.get("datatype"),
        required=bool(spec.get("required", False)),
        when=spec.get("when"),
        present=spec.get("present"),
        absent=spec.get("absent"),
        resource=spec.get("resource"),
        key=as_tuple(spec.get("key")),
        wait=bool(spec.get("wait", spec.get("required", False))),
        each=spec.get("each"),
        until=as_tuple(spec.get("until")),
        elements=tuple(_element(p, s) for p, s in nested.items()),
    )


def _elements(specs: Mapping[str, Any] | None) -> tuple[Element, ...]:
    return tuple(_element(p, s) for p, s in (specs or {}).items())


def _resource(data: Mapping[str, Any]) -> ResourceMap:
    return ResourceMap(
        name=str(data.get("name", str(data["type"]).lower())),
        type=str(data["type"]),
        id=as_tuple(data["id"]),
        elements=_elements(data.get("elements")),
        segment=data.get("segment"),
        each=bool(data.get("each", False)),
        when=data.get("when"),
        # A resource merged into another keeps what is stored of it: it is retired, not
        # rewritten from the few fields the merge message has about it.
        overlay=bool(data.get("overlay", bool(data.get("merge")))),
        keep=as_tuple(data.get("keep")),
        merge_into=as_tuple((data.get("merge") or {}).get("into")),
    )


def _yaml(path: FilePath) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a mapping file holds a YAML mapping")
    return data


def _merged(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """A resource map with another's keys; `elements` merged element by element."""
    out = dict(base)
    for key, value in change.items():
        if key == "elements":
            elements = dict(base.get("elements") or {})
            elements.update(value or {})
            out["elements"] = elements
        elif key != "use":
            out[key] = value
    return out


class Catalogue:
    """Every HL7 v2 map under a folder: messages/, segments/, datatypes/, tables/, sources/."""

    def __init__(self, root: FilePath) -> None:
        self.root = root
        self.tables: dict[str, dict[str, Any]] = {}
        self.datatypes: dict[str, Datatype] = {}
        self.segments: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, MessageMap] = {}
        self.sources: dict[str, SourceMap] = {}
        self._for_source: dict[tuple[str, str], tuple[MessageMap, Mapping[str, Any]]] = {}
        if root.exists():
            self._load()

    def _files(self, folder: str) -> list[FilePath]:
        where = self.root / folder
        return sorted([*where.glob("*.yaml"), *where.glob("*.yml")]) if where.exists() else []

    def _load(self) -> None:
        for path in self._files("tables"):
            for name, table in (_yaml(path).get("tables") or {}).items():
                self.tables[str(name)] = {str(k): v for k, v in (table or {}).items()}
        for path in self._files("datatypes"):
            data = _yaml(path)
            try:
                datatype = Datatype(
                    name=str(data["datatype"]),
                    elements=_elements(data["elements"]),
                    resource=data.get("resource"),
                    id=as_tuple(data.get("id")),
                )
            except KeyError as e:
                raise ValueError(f"{path}: incomplete datatype map ({e})") from None
            for name in (datatype.name, *as_tuple(data.get("aliases"))):
                self.datatypes[name] = datatype
        for path in self._files("segments"):
            data = _yaml(path)
            self.segments[str(data.get("name", path.stem))] = data
        for path in self._files("messages"):
            message = self._message(path)
            self.messages[message.name] = message
        for path in self._files("sources"):
            data = _yaml(path)
            try:
                source = SourceMap(
                    source=str(data["source"]),
                    version=str(data.get("version", "1")),
                    resources=tuple(data.get("resources") or ()),
                    tables=data.get("tables") or {},
                    options=data.get("options") or {},
                    name=path.stem,
                )
            except KeyError as e:
                raise ValueError(f"{path}: incomplete source map ({e})") from None
            self.sources[source.source] = source

    def _message(self, path: FilePath, changes: SourceMap | None = None) -> MessageMap:
        data = _yaml(path)
        try:
            entries = [self._entry(entry, path) for entry in data["resources"]]
            version = str(data.get("version", "1"))
            options = dict(data.get("options") or {})
            if changes is not None:
                by_name = {str(e.get("name", str(e.get("type", "")).lower())): e for e in entries}
                for change in changes.resources:
                    name = str(change.get("name", ""))
                    if name in by_name:
                        merged = _merged(by_name[name], change)
                        entries[entries.index(by_name[name])] = merged
                        by_name[name] = merged
                    else:  # a resource of its own: a Z-segment, say
                        entries.append(self._entry(change, path))
                options.update(changes.options)
                version = f"{version}+{changes.name}.{changes.version}"
            resources = tuple(_resource(e) for e in entries)
            for resource in resources:
                self._check(resource.elements, path)
            return MessageMap(
                name=str(data["name"]),
                version=version,
                messages=as_tuple(data["messages"]),
                resources=resources,
                key=as_tuple(data.get("key")),
                options=options,
                description=str(data.get("description", "")),
                adapter=str(data.get("adapter", "hl7v2")),
                path=path,
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: incomplete message map ({e})") from None

    def _entry(self, entry: Mapping[str, Any], path: FilePath) -> dict[str, Any]:
        if "use" in entry:
            used = self.segments.get(str(entry["use"]))
            if used is None:
                raise ValueError(f"{path}: no segment map '{entry['use']}'")
            return _merged(used, entry)
        return dict(entry)

    def _check(self, elements: Iterable[Element], path: FilePath) -> None:
        for element in elements:
            specs = [*(element.field or "").split("|")]
            specs += [part for key in element.key for part in key.split("|")]
            if isinstance(element.when, dict) and "field" in element.when:
                specs += str(element.when["field"]).split("|")
            for spec in (s.strip() for s in specs if s and s.strip()):
                if not _is_relative(spec):
                    try:
                        Path.parse(spec)
                    except ValueError as e:
                        raise ValueError(f"{path}: {element.path}: {e}") from None
            if element.datatype is not None and element.datatype not in self.datatypes:
                raise ValueError(f"{path}: {element.path}: no datatype map '{element.datatype}'")
            if element.lookup is not None and element.lookup not in self.tables:
                raise ValueError(f"{path}: {element.path}: no table '{element.lookup}'")
            self._check(element.elements, path)

    def choose(self, message_type: str, trigger: str, structure: str = "") -> MessageMap | None:
        """The message map for an MSH-9: the most specific one that names it."""
        wanted = [f"{message_type}^{trigger}^{structure}", f"{message_type}^{trigger}"]
        wanted.append(f"{message_type}^*")
        for pattern in wanted:
            for message in self.messages.values():
                if pattern in message.messages:
                    return message
        return None

    def for_source(
        self, message: MessageMap, application: str, facility: str
    ) -> tuple[MessageMap, Mapping[str, Mapping[str, Any]]]:
        """The message map and tables as a sender sees them (its source file applied)."""
        source = None
        for name in (f"{application}/{facility}", application):
            source = self.sources.get(name)
            if source is not None:
                break
        if source is None or message.path is None:
            return message, self.tables
        cached = self._for_source.get((message.name, source.source))
        if cached is None:
            changed = self._message(message.path, source)
            tables = dict(self.tables)
            for name, table in source.tables.items():
                tables[name] = {
                    **self.tables.get(name, {}),
                    **{str(k): v for k, v in table.items()},
                }
            cached = (changed, tables)
            self._for_source[(message.name, source.source)] = cached
        return cached


# ---- values ----------------------------------------------------------------------------


def time_of(text: str) -> str:
    """An HL7 v2 TM (HHMM[SS[.S]]) as a FHIR time."""
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,4})?(?:[+-]\d{4})?", text.strip())
    if m is None or int(m[1]) > 23 or int(m[2] or 0) > 59 or int(m[3] or 0) > 59:
        raise ValueError(f"'{text}' is not an HL7 v2 time (HHMM[SS])")
    return f"{m[1]}:{m[2] or '00'}:{m[3] or '00'}{m[4] or ''}"


def datetime_of(
    text: str, zone: ZoneInfo | None, date_only: bool = False, full: bool = False
) -> str:
    """An HL7 v2 DTM/TS as a FHIR date or dateTime, keeping its precision and offset: a
    time without an offset gets `zone`'s; minutes without seconds get `:00` (FHIR needs
    them)."""
    m = _DTM.match(text.replace(" ", ""))
    if m is None:
        raise ValueError(
            f"'{text}' is not an HL7 v2 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])"
        )
    y, mo, d, h = m["y"], m["mo"], m["d"], m["h"]
    if full:  # an instant: every part, missing ones at their start
        mo, d, h = mo or "01", d or "01", h or "00"
    for value, low, high in (
        (mo, 1, 12),
        (d, 1, 31),
        (h, 0, 23),
        (m["mi"], 0, 59),
        (m["s"], 0, 59),
    ):
        if value is not None and not low <= int(value) <= high:
            raise ValueError(f"'{text}' is not a valid date/time")
    date = y + (f"-{mo}" if mo else "") + (f"-{d}" if mo and d else "")
    if date_only or h is None or d is None:
        return date
    clock = f"{h}:{m['mi'] or '00'}:{m['s'] or '00'}" + (f".{m['f']}" if m["f"] else "")
    if m["tz"]:
        offset = f"{m['tz'][:3]}:{m['tz'][3:]}"
    else:
        local = datetime(int(y), int(mo), int(d), int(h), tzinfo=zone or ZoneInfo("UTC"))
        delta = local.utcoffset()
        minutes = int(delta.total_seconds() // 60) if delta is not None else 0
        sign = "-" if minutes < 0 else "+"
        offset = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{date}T{clock}{'Z' if offset == '+00:00' else offset}"


def _number(text: str) -> int | float:
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    return float(number) if isinstance(exponent, int) and exponent < 0 else int(number)


@dataclass
class _Run:
    tree: Tree
    tables: Mapping[str, Mapping[str, Any]]
    source: str
    zone: ZoneInfo
    extra: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    extra_lineage: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class _Scope:
    """Where relative places are read: the current segment, and (in a datatype map) the
    value being built and its v2 place."""

    segment: Segment | None
    base: Repetition | None = None
    label: str = ""


def _label(path: Path, segment: Segment | None) -> str:
    name = segment.label() if segment is not None else path.segment
    text = name
    if path.field is not None:
        text += f"-{path.field}"
        if path.repetition not in (None, 1):
            text += f"[{path.repetition}]"
        if path.component is not None:
            text += f".{path.component}"
            if path.subcomponent is not None:
                text += f".{path.subcomponent}"
    return text


def _relative(base: Repetition, spec: str) -> tuple[Any, str]:
    """A place in a value (`1`, `4.2`; `*`: the whole value): the component or
    subcomponent, and its suffix for lineage."""
    if spec == "*":
        return base, ""
    parts = [int(p) for p in spec.split(".")]
    component = base[parts[0] - 1] if 0 < parts[0] <= len(base) else []
    if len(parts) == 1:
        return component, f".{parts[0]}"
    sub = component[parts[1] - 1] if 0 < parts[1] <= len(component) else ""
    return sub, f".{parts[0]}.{parts[1]}"


class TreeMapper:
    """Applies one message map to trees; same output as `hub.ingest.mapping.Mapper`."""

    def __init__(
        self,
        mapping: MessageMap,
        catalogue: Catalogue,
        source: str,
        tables: Mapping[str, Mapping[str, Any]] | None = None,
        timezone: str = "UTC",
    ) -> None:
        self.mapping = mapping
        self.catalogue = catalogue
        self.source = source
        self.tables = tables if tables is not None else catalogue.tables
        try:
            self.zone = ZoneInfo(str(mapping.options.get("timezone", timezone)))
        except (ZoneInfoNotFoundError, ValueError):
            raise MappingError(f"unknown time zone '{mapping.options.get('timezone')}'") from None

    # -- reading the tree --

    def _read(self, run: _Run, spec: str, scope: _Scope) -> tuple[Any, str]:
        """The node at a place (absolute `PID-5.1` or, in a datatype map, relative `1`)."""
        if spec[:1].isdigit() or spec == "*":
            if scope.base is None:
                raise MappingError(f"'{spec}' is a place in a value, outside of a datatype map")
            node, suffix = _relative(scope.base, spec)
            return node, scope.label + suffix
        path = Path.parse(spec)
        segment = run.tree.resolve(path, scope.segment)
        if segment is None:
            return None, _label(path, None)
        run.touched.add(segment.position)
        return run.tree.node(path, scope.segment), _label(path, segment)

    def _text(self, run: _Run, spec: str, scope: _Scope) -> tuple[str, str]:
        """The text at a place; `A|B` is the first of A and B with a value."""
        label = ""
        for alternative in spec.split("|"):
            node, label = self._read(run, alternative.strip(), scope)
            text = text_of(node).strip()
            if text:
                return text, label
        return "", label

    def _holds(self, run: _Run, when: Any, scope: _Scope) -> bool:
        """A condition (`{field: F, equals|in|not_in|present: ...}`), or a list of them,
        all of which must hold."""
        if not when:
            return True
        if isinstance(when, list):
            return all(self._holds(run, one, scope) for one in when)
        if "segment" in when and "field" not in when:
            return run.tree.near(str(when["segment"]), scope.segment) is not None
        actual = self._text(run, str(when["field"]), scope)[0]
        if "equals" in when:
            return actual == str(when["equals"])
        if "in" in when:
            return actual in [str(v) for v in when["in"]]
        if "not_in" in when:
            return actual not in [str(v) for v in when["not_in"]]
        if "present" in when:
            return bool(actual) == bool(when["present"])
        if "longer" in when:
            return len(actual) > int(when["longer"])
        return True

    # -- converting --

    def _lookup(self, name: str, code: str, label: str) -> Any:
        table = self.tables.get(name)
        if table is None:
            raise MappingError(f"the mapping has no table '{name}'", label)
        if code in table:
            return table[code]
        if "*" in table:
            return table["*"]
        raise MappingError(
            f"unknown code '{code}' (table {name} has {', '.join(map(str, list(table)[:8]))})",
            label,
        )

    def system(self, name: str) -> str | None:
        """A v2 coding system name (`LN`, `HL70001`, `SCT`) as a FHIR system URL."""
        if not name:
            return None
        table = self.tables.get("coding-systems", {})
        found = table.get(name) or table.get(name.upper())
        if found:
            return str(found)
        m = _HL7_TABLE.match(name)
        if m:
            return f"http://terminology.hl7.org/CodeSystem/v2-{m[1]}"
        if "://" in name or name.startswith("urn:"):
            return name
        return None

    def _hd_system(self, node: Any) -> str | None:
        """An assigning authority (HD) as an identifier system: the sender's table first (by
        namespace id, then by universal id), then the universal id by its type."""
        subs = [text_of(s).strip() for s in (node if isinstance(node, list) else [node])]
        namespace, universal, kind = [*subs, "", "", ""][:3]
        table = self.tables.get("assigning-authorities", {})
        for key in (namespace, universal):
            if key and key in table:
                return str(table[key])
        if universal:
            kind = kind.upper()
            if kind == "ISO" or re.fullmatch(r"[0-2](\.\d+)+", universal):
                return f"urn:oid:{universal}"
            if kind in ("UUID", "GUID") and re.fullmatch(r"[0-9a-fA-F-]{36}", universal):
                return f"urn:uuid:{universal.lower()}"
            if kind in ("URI", "URL") or "://" in universal:
                return universal
        return None

    def _convert(self, element: Element, node: Any, label: str) -> Any:
        kind = element.type
        if kind == "hd-system":
            return self._hd_system(node)
        if kind == "ei-system":  # EI-2..4 are an HD spread over components
            rep = node if isinstance(node, list) else []
            return self._hd_system([text_of(c) for c in rep[1:4]])
        if kind == "sn":
            return self._sn(node, label)
        if kind == "sn-text":  # a range or ratio: `1:128`, `2-4`
            rep = node[0] if isinstance(node, list) and node and isinstance(node[0], list) else node
            parts = [text_of(c).strip() for c in (rep if isinstance(rep, list) else [rep])]
            return "".join(parts) or None
        if kind == "telephone":
            return self._telephone(node)
        if kind in ("text", "text-base64"):  # every repetition, a line each
            reps = node if isinstance(node, list) and node and isinstance(node[0], list) else [node]
            joined = "\n".join(t for t in (text_of(r) for r in reps) if t.strip()).strip()
            if not joined:
                return None
            if kind == "text":
                return joined
            return base64.b64encode(joined.encode("utf-8")).decode("ascii")
        if kind == "joined":  # the components of a value, space separated (NA)
            rep = node[0] if isinstance(node, list) and node and isinstance(node[0], list) else node
            parts = [text_of(c).strip() for c in (rep if isinstance(rep, list) else [rep])]
            return " ".join(p for p in parts if p) or None
        text = text_of(node).strip()
        if not text:
            return None
        if element.lookup is not None:
            return self._lookup(element.lookup, text, label)
        try:
            if kind == "string":
                return text
            if kind == "system":
                return self.system(text)
            if kind == "date":
                return datetime_of(text, self.zone, date_only=True)
            if kind == "datetime":
                return datetime_of(text, self.zone)
            if kind == "instant":
                return datetime_of(text, self.zone, full=True)
            if kind == "time":
                return time_of(text)
            if kind == "decimal":
                return _number(text)
            if kind in ("integer", "positiveInt"):
                number = Decimal(text)
                if number != number.to_integral_value():
                    raise ValueError(f"'{text}' is not a whole number")
                return int(number)
            if kind == "base64":
                try:
                    base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    return None
                return text
            if kind == "boolean":
                lowered = text.lower()
                if lowered in ("y", "yes", "true", "t", "1"):
                    return True
                if lowered in ("n", "no", "false", "f", "0"):
                    return False
                raise ValueError(f"'{text}' is not a boolean (Y or N)")
        except (ValueError, InvalidOperation) as e:
            kinds = {"decimal": "a number", "integer": "a whole number"}
            message = (
                str(e)
                if str(e).startswith("'")
                else f"'{text}' is not {kinds.get(kind, 'a valid ' + kind)}"
            )
            raise MappingError(message, label) from None
        raise MappingError(f"unknown conversion type '{kind}'", label)

    def _sn(self, node: Any, label: str) -> dict[str, Any] | None:
        """SN (structured numeric: comparator^number^separator^number) as a Quantity:
        `<^0.10`, `^182`, or `<0.10` in one component. A range or ratio (a second number)
        is no Quantity: None (the map writes it as text, type `sn-text`)."""
        rep = node[0] if isinstance(node, list) and node and isinstance(node[0], list) else node
        parts = [text_of(c).strip() for c in (rep if isinstance(rep, list) else [rep])]
        parts += ["", "", "", ""]
        if parts[3]:
            return None
        text = parts[0] + parts[1] if parts[1] else parts[0]
        if not text:
            return None
        m = _SN.match(text)
        if m is None:
            raise MappingError(f"'{text}' is not a structured numeric value", label)
        out: dict[str, Any] = {"value": _number(m["num"])}
        if m["cmp"] in ("<", ">", "<=", ">="):
            out["comparator"] = m["cmp"]
        return out

    @staticmethod
    def _telephone(node: Any) -> str | None:
        rep = node if isinstance(node, list) else [[node]]
        parts = [text_of(c).strip() for c in rep] + [""] * 12
        if parts[3]:  # XTN-4: an e-mail address
            return parts[3]
        if parts[11]:  # XTN-12: the unformatted number
            return parts[11]
        if parts[6]:
            number = parts[6]
            if parts[5]:
                number = f"({parts[5]}) {number}"
            if parts[4]:
                number = f"+{parts[4]} {number}"
            if parts[7]:
                number += f" ext. {parts[7]}"
            return number
        return parts[0] or None

    # -- building --

    def _fill(
        self,
        run: _Run,
        target: dict[str, Any],
        elements: Sequence[Element],
        scope: _Scope,
        lineage: list[tuple[str, str]],
        awaits: list[str],
    ) -> None:
        for element in elements:
            if element.each is not None:  # its `when` holds, or not, for each segment
                self._each(run, target, element, scope, lineage, awaits)
                continue
            if not self._holds(run, element.when, scope):
                continue
            if element.field is None:
                if element.type == "reference":
                    self._reference(run, target, element, scope, lineage, awaits)
                elif element.value is not None:
                    _put(target, element.path, copy.deepcopy(element.value))
                continue
            if element.present is not None or element.absent is not None:
                text, label = self._text(run, element.field, scope)
                chosen = element.present if text else element.absent
                if chosen is not None:
                    lineage.append((_put(target, element.path, copy.deepcopy(chosen)), label))
                continue
            if element.path.split("#", 1)[0].endswith("[*]"):
                for alternative in element.field.split("|"):
                    node, label = self._read(run, alternative.strip(), scope)
                    if text_of(node).strip():
                        break
                if scope.base is None and not _names_component(element.field):
                    reps = node or []  # a field: every repetition
                else:
                    reps = [node] if node else []
                for number, rep in enumerate(reps, start=1):
                    rep_label = _with_repetition(label, number)
                    self._one(run, target, element, rep, rep_label, lineage, awaits, scope)
                continue
            if element.type == "reference":
                self._reference(run, target, element, scope, lineage, awaits)
                continue
            node, label = self._first(run, element.field, scope, element.datatype is not None)
            if element.required and not text_of(node).strip():
                raise MappingError("the required field is empty", label)
            self._one(run, target, element, node, label, lineage, awaits, scope)

    def _first(self, run: _Run, spec: str, scope: _Scope, whole: bool) -> tuple[Any, str]:
        """The node of an element: for a datatype, the first repetition of a field."""
        node: Any = None
        label = ""
        for alternative in spec.split("|"):
            node, label = self._read(run, alternative.strip(), scope)
            if whole and isinstance(node, list) and not _is_relative(alternative):
                path = Path.parse(alternative.strip())
                if path.repetition is None and path.component is None:
                    node = node[0] if node else None  # a field: its first repetition
            if text_of(node).strip():
                break
        return node, label

    def _one(
        self,
        run: _Run,
        target: dict[str, Any],
        element: Element,
        node: Any,
        label: str,
        lineage: list[tuple[str, str]],
        awaits: list[str],
        scope: _Scope,
    ) -> None:
        if element.datatype is not None:
            rep = _as_repetition(node)
            value, inner = self._datatype(run, element.datatype, rep, label, scope.segment)
            if value in (None, {}, []):
                return
            where = _put(target, element.path, value)
            if inner:
                lineage.extend((f"{where}.{p}" if p else where, v) for p, v in inner)
            else:  # a reference to the resource the datatype made
                lineage.append((where, label))
            return
        value = self._convert(element, node, label)
        if value is None:
            return
        lineage.append((_put(target, element.path, value), label))

    def _datatype(
        self, run: _Run, name: str, rep: Repetition, label: str, segment: Segment | None
    ) -> tuple[Any, list[tuple[str, str]]]:
        """A value built by a datatype map, and its lineage (relative element, v2 place)."""
        datatype = self.catalogue.datatypes.get(name)
        if datatype is None:
            raise MappingError(f"no datatype map '{name}'", label)
        if not any(text_of(c).strip() for c in rep):
            return None, []
        scope = _Scope(segment, rep, label)
        built: dict[str, Any] = {}
        inner: list[tuple[str, str]] = []
        awaits: list[str] = []
        self._fill(run, built, datatype.elements, scope, inner, awaits)
        built = _prune(built)
        value: Any = built
        if datatype.resource is None or not built:
            return value, inner
        key = [self._text(run, k, scope)[0] for k in datatype.id]
        if not any(key):
            return None, []
        rid = resource_id(self.source, datatype.resource, key)
        resource = {"resourceType": datatype.resource, "id": rid, **built}
        run.extra.setdefault((datatype.resource, rid), resource)
        run.extra_lineage.setdefault(
            (datatype.resource, rid), [(f"{datatype.resource}.{p}", v) for p, v in inner]
        )
        return {"reference": f"{datatype.resource}/{rid}"}, []

    def _reference(
        self,
        run: _Run,
        target: dict[str, Any],
        element: Element,
        scope: _Scope,
        lineage: list[tuple[str, str]],
        awaits: list[str],
    ) -> None:
        if element.resource is None:
            raise MappingError(f"{element.path}: a reference needs `resource`")
        keys = element.key or ((element.field,) if element.field else ())
        values, label = [], ""
        for spec in keys:
            text, label = self._text(run, spec, scope)
            if not text:
                if element.required:
                    raise MappingError("the reference key field is empty", label)
                return
            values.append(text)
        reference = {
            "reference": f"{element.resource}/{resource_id(self.source, element.resource, values)}"
        }
        where = _put(target, element.path, reference)
        lineage.append((where, label))
        if element.wait:
            awaits.append(_INDEX.sub("", where).removesuffix(".reference"))

    def _each(
        self,
        run: _Run,
        target: dict[str, Any],
        element: Element,
        scope: _Scope,
        lineage: list[tuple[str, str]],
        awaits: list[str],
    ) -> None:
        name = str(element.each)
        if scope.segment is None:
            segments = run.tree.all(name)
        elif scope.segment.name == name:
            segments = [scope.segment]  # the current segment itself: a composite element
        else:
            segments = run.tree.following(name, scope.segment, element.until)
        for segment in segments:
            inner_scope = _Scope(segment)
            if not self._holds(run, element.when, inner_scope):
                continue
            run.touched.add(segment.position)
            if element.elements:
                item: dict[str, Any] = {}
                inner: list[tuple[str, str]] = []
                self._fill(run, item, element.elements, inner_scope, inner, awaits)
                item = _prune(item)
                if not item:
                    continue
                where = _put(target, element.path, item)
                lineage.extend((f"{where}.{p}", v) for p, v in inner)
            else:
                flat = replace(element, each=None)
                self._fill(run, target, [flat], inner_scope, lineage, awaits)

    # -- the message --

    def order_key(self, record: Mapping[str, str]) -> str | None:
        if not self.mapping.key:
            return None
        return "|".join((record.get(k) or "").strip() for k in self.mapping.key)

    def map(self, tree: Tree) -> Mapped:
        run = _Run(tree, self.tables, self.source, self.zone)
        run.touched.update(s.position for s in tree.segments if s.name in ("MSH", "EVN"))
        out = Mapped(order_key=self.order_key(tree))
        for rmap in self.mapping.resources:
            if rmap.segment is not None:
                anchors = tree.all(rmap.segment) if rmap.each else tree.all(rmap.segment)[:1]
            else:
                anchors = [None]  # type: ignore[list-item]
            for anchor in anchors:
                scope = _Scope(anchor)
                if anchor is not None:
                    run.touched.add(anchor.position)
                if not self._holds(run, rmap.when, scope):
                    continue
                # The first part of the key names the subject and must have a value; the
                # others narrow it down and may be empty.
                key = []
                for number, spec in enumerate(rmap.id):
                    text, label = self._text(run, spec, scope)
                    if not text and number == 0:
                        raise MappingError(f"the key of {rmap.type} ({spec}) is empty", label)
                    key.append(text)
                resource = new_resource(self.source, rmap.type, key)
                lineage: list[tuple[str, str]] = []
                awaits: list[str] = []
                self._fill(run, resource, rmap.elements, scope, lineage, awaits)
                lineage = [(f"{rmap.type}.{p}", v) for p, v in lineage]
                out.resources.append(_prune(resource))
                out.lineage.append(lineage)
                out.awaits.append(awaits)
                out.overlay.append(rmap.overlay)
                out.keep.append(rmap.keep)
                if rmap.merge_into:
                    out.merges.append(self._merge(run, rmap, resource["id"], key, scope))
        written = {(r["resourceType"], r["id"]) for r in out.resources}
        for made, extra in run.extra.items():
            if made in written:
                continue
            out.resources.append(_prune(extra))
            out.lineage.append(run.extra_lineage.get(made, []))
            out.awaits.append([])
            out.overlay.append(False)
            out.keep.append(())
        if out.resources:
            first = out.resources[0]["resourceType"]
            out.lineage[0] = out.lineage[0] + [
                (f"{first} (not mapped)", s.label())
                for s in tree.segments
                if s.position not in run.touched
            ]
        return out

    def _merge(
        self, run: _Run, rmap: ResourceMap, merged: str, key: list[str], scope: _Scope
    ) -> tuple[str, str, str, str]:
        """(type, merged id, survivor id, source field) of a resource map with `merge`."""
        into = []
        for spec in rmap.merge_into:
            text, label = self._text(run, spec, scope)
            if not text:
                raise MappingError(f"the key of the surviving {rmap.type} is empty", label)
            into.append(text)
        survivor = resource_id(self.source, rmap.type, into)
        if survivor == merged:
            raise MappingError(f"a {rmap.type} cannot be merged into itself ({key[0]})")
        first = self._text(run, rmap.id[0], scope)[1]
        return (rmap.type, merged, survivor, first)


def _is_relative(spec: str) -> bool:
    spec = spec.strip()
    return spec[:1].isdigit() or spec == "*"


def _names_component(spec: str) -> bool:
    try:
        path = Path.parse(spec.split("|")[0].strip())
    except ValueError:
        return True
    return path.component is not None or path.repetition is not None


def _with_repetition(label: str, number: int) -> str:
    if number == 1:
        return label
    head, dot, rest = label.partition(".")
    return f"{head}[{number}]{dot}{rest}"


def _as_repetition(node: Any) -> Repetition:
    """A node as one repetition (a list of components)."""
    if node is None:
        return []
    if isinstance(node, str):
        return [[node]]
    if node and isinstance(node[0], str):  # a component: its subcomponents as components
        return [[s] for s in node]
    return node


def _put(target: dict[str, Any], path: str, value: Any) -> str:
    """Set an element (`[*]`: a new list item at the end); its path with list positions.
    A `#label` ends a path that another element map fills as well (the later one wins)."""
    steps = path.split("#", 1)[0].split(".")
    node: Any = target
    done: list[str] = []
    for i, step in enumerate(steps):
        m = _STEP.match(step)
        if not m:
            raise MappingError(f"bad element path '{path}'")
        name, index = m["name"], m["index"]
        last = i == len(steps) - 1
        if index is None:
            done.append(name)
            if last:
                if isinstance(node.get(name), dict) and isinstance(value, dict):
                    node[name].update(value)
                else:
                    node[name] = value
            else:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = node[name] = {}
                node = child
            continue
        items = node.setdefault(name, [])
        position = len(items) if index == "*" else int(index)
        while len(items) <= position:
            items.append(None)
        done.append(f"{name}[{position}]")
        if last:
            if isinstance(items[position], dict) and isinstance(value, dict):
                items[position].update(value)
            else:
                items[position] = value
        else:
            if not isinstance(items[position], dict):
                items[position] = {}
            node = items[position]
    return ".".join(done)


def _prune(value: Any) -> Any:
    # A field's empty text is no value either.
    return prune(value, (None, {}, [], ""))
