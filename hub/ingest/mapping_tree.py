"""Records that are trees: messages of segments, fields, repetitions, components.

A CSV row is a flat record (column -> text); an HL7 v2 message is a tree. The
tree is kept as plain lists so the mapping engine (`hub.ingest.mapping_v2`)
and the parser (`adapters.hl7v2.parse`) share it without depending on each
other: a segment's field n is a list of repetitions, a repetition a list of
components, a component a list of subcomponents (text, escapes decoded).

Paths name a place in the tree the way HL7 v2 documents do: `PID-5` (field),
`PID-5.1` (component), `PID-3.4.2` (subcomponent), `PID-5[2].1` (the second
repetition), `OBX[3]-5` (the third OBX segment). As a `Mapping[str, str]` a
tree answers such a path with its text (the first repetition, component and
subcomponent unless the path says otherwise), so the flat parts of the format
(`key`, `when`, `id`) read HL7 v2 the same way they read CSV columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

# Segments that start a group of a message structure: a segment read from another one is
# looked for in that one's group (`Tree.near`).
ORDER_GROUPS = frozenset(
    {"ORC", "OBR", "RXA", "RXO", "RXE", "RXD", "RXG", "SPM", "TXA", "RGS", "FT1", "IN1", "GT1"}
)
GROUPS = ORDER_GROUPS | {"MSH", "PID", "SCH", "MRG"}

Component = list[str]
Repetition = list[Component]
Field = list[Repetition]

PATH = re.compile(
    r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<occurrence>\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<repetition>\d+)\])?"
    r"(?:\.(?P<component>\d+)(?:\.(?P<subcomponent>\d+))?)?)?$"
)


@dataclass(frozen=True)
class Path:
    segment: str
    occurrence: int | None = None  # 1-based; None: the segment in scope
    field: int | None = None
    repetition: int | None = None  # 1-based; None: the first
    component: int | None = None
    subcomponent: int | None = None

    @classmethod
    def parse(cls, text: str) -> Path:
        return _parse_path(text)

    @classmethod
    def _parse(cls, text: str) -> Path:
        m = PATH.match(text.strip())
        if m is None:
            raise ValueError(f"'{text}' is not an HL7 v2 path (PID-5, PID-5.1, OBX[2]-5, ...)")

        def number(name: str) -> int | None:
            value = m[name]
            return int(value) if value is not None else None

        return cls(
            m["segment"],
            number("occurrence"),
            number("field"),
            number("repetition"),
            number("component"),
            number("subcomponent"),
        )


@lru_cache(maxsize=4096)
def _parse_path(text: str) -> Path:
    """Paths come from mapping files, a few hundred of them: each is parsed once."""
    return Path._parse(text)


@dataclass
class Segment:
    name: str
    fields: list[Field]  # fields[0] is the name; MSH-1 and MSH-2 are fields[1], fields[2]
    position: int = 0  # in the message, from 0
    occurrence: int = 1  # among the message's segments of this name, from 1

    def field(self, number: int) -> Field:
        return self.fields[number] if 0 < number < len(self.fields) else []

    def label(self) -> str:
        return self.name if self.occurrence == 1 else f"{self.name}[{self.occurrence}]"


def text_of(value: Field | Repetition | Component | str | None) -> str:
    """The first text of a node: first repetition, component, subcomponent."""
    while isinstance(value, list):
        if not value:
            return ""
        value = value[0]
    return value or ""


@dataclass
class Tree(Mapping[str, str]):
    """A message as segments; a `Mapping` from HL7 v2 paths to their text."""

    segments: list[Segment]
    by_name: dict[str, list[Segment]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for position, segment in enumerate(self.segments):
            same = self.by_name.setdefault(segment.name, [])
            segment.position = position
            segment.occurrence = len(same) + 1
            same.append(segment)

    def all(self, name: str) -> list[Segment]:
        return self.by_name.get(name, [])

    def first(self, name: str) -> Segment | None:
        found = self.by_name.get(name)
        return found[0] if found else None

    def near(self, name: str, current: Segment | None) -> Segment | None:
        """The segment `name` as seen from `current`.

        A segment that starts a group (`GROUPS`: PID, ORC, OBR, RXA, ...) is the nearest
        one before `current` (an OBX's OBR, an RXA's ORC), else the first in the message.
        Any other segment is the one in `current`'s group (a PV1's PV2, an RXA's RXR),
        else one of the message's header part (before the first order or result group:
        the PV1 seen from an OBX), else none.
        """
        if current is None:
            return self.first(name)
        if current.name == name:
            return current
        if name in GROUPS:
            before = [s for s in self.by_name.get(name, ()) if s.position < current.position]
            return before[-1] if before else self.first(name)
        start = current.position
        while start > 0 and self.segments[start].name not in GROUPS:
            start -= 1
        end = current.position + 1
        while end < len(self.segments) and self.segments[end].name not in GROUPS:
            end += 1
        for segment in self.segments[start:end]:
            if segment.name == name:
                return segment
        first = self.first(name)
        if first is not None and not any(
            s.name in ORDER_GROUPS for s in self.segments[: first.position]
        ):
            return first
        return None

    def following(self, name: str, current: Segment, until: tuple[str, ...] = ()) -> list[Segment]:
        """The `name` segments after `current` that belong to it: up to the next segment
        named like `current` (or one of `until`)."""
        stop = {current.name, *until} - {name}
        out = []
        for segment in self.segments[current.position + 1 :]:
            if segment.name in stop:
                break
            if segment.name == name:
                out.append(segment)
        return out

    def resolve(self, path: Path, current: Segment | None = None) -> Segment | None:
        if path.occurrence is not None:
            found = self.by_name.get(path.segment, [])
            return found[path.occurrence - 1] if path.occurrence <= len(found) else None
        return self.near(path.segment, current)

    def node(
        self, path: Path, current: Segment | None = None
    ) -> Field | Repetition | Component | str | None:
        """The node a path names: a field (all repetitions) when it names no repetition nor
        component, else one repetition, component or subcomponent."""
        segment = self.resolve(path, current)
        if segment is None or path.field is None:
            return None
        value: Field = segment.field(path.field)
        if path.repetition is None and path.component is None:
            return value
        reps = value
        index = (path.repetition or 1) - 1
        if index >= len(reps):
            return None
        rep = reps[index]
        if path.component is None:
            return rep
        if path.component > len(rep):
            return None
        component = rep[path.component - 1]
        if path.subcomponent is None:
            return component
        if path.subcomponent > len(component):
            return None
        return component[path.subcomponent - 1]

    def text(self, path: str | Path, current: Segment | None = None) -> str:
        parsed = Path.parse(path) if isinstance(path, str) else path
        return text_of(self.node(parsed, current)).strip()

    # Mapping[str, str]: every non-empty field, by path.
    def __getitem__(self, key: str) -> str:
        try:
            path = Path.parse(key)
        except ValueError:
            raise KeyError(key) from None
        if self.resolve(path) is None:
            raise KeyError(key)
        return self.text(path)

    def __iter__(self) -> Iterator[str]:
        for segment in self.segments:
            for number in range(1, len(segment.fields)):
                if text_of(segment.fields[number]):
                    yield f"{segment.label()}-{number}"

    def __len__(self) -> int:
        return sum(1 for _ in self)
