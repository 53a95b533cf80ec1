"""The HL7 v2 adapter: one message per unit, mapped by the message map its MSH-9 names.

Unlike a CSV file, an HL7 v2 feed carries many kinds of message, so a stored
message has no mapping of its own (`mapping` None): at prepare time the adapter
reads MSH-9 (type, trigger, structure) and chooses the message map under
`mappings/hl7v2/messages/` that names it; the sender's file under
`mappings/hl7v2/sources/` (by MSH-3/MSH-4) may change it. The receiver asks
`accepts(header)` before it acknowledges a message, so an unknown type is
rejected (and kept) at once.

Splitting is `framing.split_stream` (files of one or many messages, framed or
not), and each unit is checked as the MLLP listener checks it (`receipt`): stored
under its own source (`<MSH-3.1>/<MSH-4.1>`, or `<MSH-3.1>`) and external id
(MSH-3, MSH-4 and MSH-10: a resend is a duplicate), a refused one with its reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from adapters.hl7v2 import receipt
from adapters.hl7v2.framing import split_stream
from adapters.hl7v2.header import Header, MalformedHeader, parse_header
from adapters.hl7v2.parse import parse, read, source_of
from hub.ingest.adapters import Unit
from hub.ingest.mapping import Mapped, Mapper, MappingError
from hub.ingest.mapping_tree import Tree
from hub.ingest.mapping_v2 import Catalogue, MessageMap, TreeMapper
from hub.settings import get_settings


class Hl7v2Adapter:
    name = "hl7v2"
    field_label = "field"
    content_types: tuple[str, ...] = (
        "application/hl7-v2",
        "x-application/hl7-v2+er7",
        "text/plain",
    )
    mappings_dir: Path | None = None  # its maps are under the hub's mappings/hl7v2/
    # Each unit names its source, and the message map is chosen per message: `hub ingest`
    # and the receiver need no --mapping nor --source.
    chooses_mapping = True

    def __init__(self, root: Path | None = None) -> None:
        settings = get_settings()
        self.root = root or settings.mappings_dir / "hl7v2"
        self.default_charset = settings.hl7v2_charset
        self.source_charsets = dict(settings.hl7v2_source_charsets)
        self.timezone = settings.hl7v2_timezone
        # Read at start-up, as every mapping is: a map that does not load stops it, naming
        # the file (a restart reads changed maps).
        self.catalogue = Catalogue(self.root)

    def split(self, stream: IO[bytes], origin: str, mapping: str | None) -> Iterator[Unit]:
        for number, raw in enumerate(split_stream(stream), start=1):
            yield receipt.unit(raw, receipt.check(raw, self), f"{origin} message {number}")

    # -- parsing and mapping --

    def source_of(self, raw: bytes) -> str:
        """The sender of a message: `<MSH-3.1>/<MSH-4.1>`, read off its MSH line."""
        try:
            return parse_header(raw).source
        except MalformedHeader:
            return ""

    def charset_for(self, source: str) -> str:
        return self.source_charsets.get(source, self.default_charset)

    def parse(self, raw: bytes, source: str | None = None) -> Tree:
        default = self.charset_for(source or self.source_of(raw))
        return parse(raw, default)

    def message_map(self, tree: Mapping[str, str]) -> MessageMap:
        found = self.catalogue.choose(
            tree.get("MSH-9.1", ""), tree.get("MSH-9.2", ""), tree.get("MSH-9.3", "")
        )
        if found is None:
            raise MappingError(f"no mapping for message type {_type_text(tree)}", "MSH-9")
        return found

    def mapper_for(self, record: Mapping[str, str], source: str | None = None) -> TreeMapper:
        """The mapper of a parsed message: its message map as its sender sees it."""
        application, facility = record.get("MSH-3.1", ""), record.get("MSH-4.1", "")
        message, tables = self.catalogue.for_source(self.message_map(record), application, facility)
        return TreeMapper(
            message,
            self.catalogue,
            source or source_of(application, facility),
            tables,
            timezone=self.timezone,
        )

    def map(self, record: Mapping[str, str], mapper: Mapper | TreeMapper) -> Mapped:
        if not isinstance(record, Tree):
            raise MappingError("an HL7 v2 record is a parsed message")
        if not isinstance(mapper, TreeMapper):
            mapper = self.mapper_for(record)
        return mapper.map(record)

    def order_key(self, raw: bytes, source: str, header: Header | None = None) -> str | None:
        """The patient a message is about (its map's `key`), or None if it does not parse
        or has no map (it then fails when prepared). `header`: its MSH, when read already."""
        if header is None:
            try:
                header = parse_header(raw)
            except MalformedHeader:
                return None
        chosen = self.catalogue.choose(header.message_type, header.trigger, header.structure)
        if chosen is None:
            return None
        application = header.first(header.sending_application)
        message, _ = self.catalogue.for_source(
            chosen, application, header.first(header.sending_facility)
        )
        if not message.key:
            return None
        try:
            # The receiver asks this of every message before it acknowledges it: the key's
            # fields are read off the lines, not from a full parse (a few times dearer).
            values = read(raw, message.key, self.charset_for(source or self.source_of(raw)))
            if values is None:
                tree = self.parse(raw, source)
                values = [tree.get(k) or "" for k in message.key]
        except MappingError:
            return None
        return "|".join(v.strip() for v in values) or None

    # -- the receiver's question, before it acknowledges --

    def accepts(self, header: Any) -> str | None:
        """None when a message map takes this MSH-9 (from this sender), else why not."""
        message_type = str(getattr(header, "message_type", "") or "")
        trigger = str(getattr(header, "trigger", "") or "")
        structure = str(getattr(header, "structure", "") or "")
        if self.catalogue.choose(message_type, trigger, structure) is None:
            shown = "^".join(p for p in (message_type, trigger) if p) or "(empty MSH-9)"
            return f"no mapping for message type {shown}"
        return None


def _type_text(tree: Mapping[str, str]) -> str:
    parts = [tree.get("MSH-9.1", ""), tree.get("MSH-9.2", "")]
    return "^".join(p for p in parts if p) or "(empty MSH-9)"


def external_id(raw: bytes) -> str:
    """MSH-3, MSH-4 and MSH-10 of a message, as sent: the same message sent again is a
    duplicate."""
    return parse_header(raw).external_id
