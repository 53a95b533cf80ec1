"""The HL7 v2 adapter, as far as receiving needs it.

Splitting is `framing.split_stream` (files of one or many messages, framed or not); a
unit is stored under its own source (`<MSH-3.1>/<MSH-4.1>`) with no mapping, as the
message map is chosen per message from MSH-9 when it is prepared. `accepts` tells the
receiver whether a message type has a message map. Parsing and mapping are minimal
here: every message fails when it is prepared, with a reason that says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from adapters.hl7v2 import receipt
from adapters.hl7v2.framing import split_stream
from adapters.hl7v2.header import Header
from hub.errors import Invalid
from hub.ingest.adapters import Unit
from hub.ingest.mapping import Mapped, Mapper

# The message types of the hub's scope (MSH-9.1^MSH-9.2).
SUPPORTED = frozenset(
    [f"ADT^A{n:02d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 28, 31, 34, 40, 47)]
    + ["ORU^R01", "ORM^O01", "OML^O21", "VXU^V04"]
    + [f"SIU^S{n}" for n in (12, 13, 14, 15)]
    + ["MDM^T02", "MDM^T06", "RDE^O11", "DFT^P03"]
)


class Hl7v2Adapter:
    name = "hl7v2"
    field_label = "field"
    content_types = ("application/hl7-v2", "x-application/hl7-v2+er7", "text/plain")
    mappings_dir: Path | None = None
    # Each unit names its source, and the message map is chosen per message: `hub ingest`
    # and the receiver need no --mapping nor --source.
    chooses_mapping = True

    def accepts(self, header: Header) -> str | None:
        if header.event in SUPPORTED:
            return None
        return f"no mapping for message type {header.event}"

    def split(self, stream: IO[bytes], origin: str, mapping: str | None) -> Iterator[Unit]:
        for n, raw in enumerate(split_stream(stream), 1):
            yield receipt.unit(raw, receipt.check(raw, self), f"{origin} message {n}")

    def parse(self, raw: bytes) -> Mapping[str, str]:
        record: dict[str, str] = {}
        for segment in raw.replace(b"\n", b"\r").split(b"\r"):
            text = segment.decode("utf-8", "replace")
            if len(text) < 4:
                continue
            name, sep = text[:3], text[3]
            for i, value in enumerate(text.split(sep)[1:], 1):
                record.setdefault(f"{name}-{i + (name == 'MSH')}", value)
        return record

    def map(self, record: Mapping[str, str], mapper: Mapper) -> Mapped:
        raise Invalid("HL7 v2 messages cannot be mapped yet: no message maps are installed")
