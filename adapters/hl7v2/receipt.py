"""What the receiver checks before it acknowledges a message, and how it stores it.

Only what is cheap and certain at receipt, so that the ACK never waits for mapping or
for the FHIR writes (docs/hl7v2.md):

- reject (AR/CR): the MSH cannot be read (the field is named), the version is not HL7
  v2, or the adapter has no message map for MSH-9 (its `accepts` says why);
- error (AE/CE): a segment whose id is not three capitals or digits (the message does
  not split into segments), or a segment the hub needs for the message type is missing.

A refused message is stored all the same (status `failed`, with the reason), so that
nothing that reached the hub is lost and a replay takes it once the cause is fixed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from adapters.hl7v2.ack import ACCEPT, ERROR, REJECT, ErrorDetail
from adapters.hl7v2.header import (
    SEGMENT_SEQUENCE_ERROR,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_VERSION_ID,
    Header,
    MalformedHeader,
    is_segment_id,
    parse_header,
)
from hub.ingest.adapters import Unit

# The source a message whose MSH cannot be read is stored under.
UNIDENTIFIED = "unidentified"

# Segments the hub needs to process a message, by MSH-9.1 (and trigger, where it
# matters): their absence is answered AE naming the segment. Fewer than the abstract
# message syntax requires, on purpose: feeds omit optional-in-practice segments (PV1 in
# an A28) and the mapping copes.
REQUIRED: dict[str, tuple[str, ...]] = {
    "ADT": ("PID",),
    "ADT^A34": ("PID", "MRG"),
    "ADT^A40": ("PID", "MRG"),
    "ADT^A47": ("PID", "MRG"),
    "ORU": ("OBR",),
    "ORM": ("ORC",),
    "OML": ("ORC",),
    "VXU": ("PID", "RXA"),
    "SIU": ("SCH",),
    "MDM": ("PID", "TXA"),
    "RDE": ("ORC", "RXE"),
    "DFT": ("PID",),
}


class Accepting(Protocol):
    """The adapter's say on a message type: None when it has a message map for MSH-9,
    else why not (`no mapping for message type ZZZ^Z01`)."""

    def accepts(self, header: Header) -> str | None: ...

    def order_key(self, raw: bytes, source: str, header: Header | None = None) -> str | None:
        """The subject the message is about (its patient), for in-order processing."""
        ...


@dataclass(frozen=True)
class Verdict:
    outcome: str  # accept, error or reject
    header: Header | None  # None: the MSH could not be read
    errors: tuple[ErrorDetail, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str | None:
        """Why the message is refused, as stored in its error."""
        if self.outcome == ACCEPT:
            return None
        return "; ".join(e.text for e in self.errors) or self.outcome


def check(raw: bytes, adapter: Accepting) -> Verdict:
    try:
        header = parse_header(raw)
    except MalformedHeader as e:
        number = e.field.partition("-")[2]
        return Verdict(
            REJECT,
            None,
            (ErrorDetail(e.code, e.message, field=int(number) if number.isdigit() else None),),
        )
    if not header.version.startswith("2."):
        return Verdict(
            REJECT,
            header,
            (
                ErrorDetail(
                    UNSUPPORTED_VERSION_ID,
                    f"MSH-12: version {header.version} is not HL7 v2",
                    field=12,
                ),
            ),
        )
    why = adapter.accepts(header)
    if why is not None:
        return Verdict(
            REJECT,
            header,
            (ErrorDetail(UNSUPPORTED_MESSAGE_TYPE, f"MSH-9: {why}", field=9, component=1),),
        )
    errors = _content(raw, header)
    return Verdict(ERROR if errors else ACCEPT, header, tuple(errors))


def _content(raw: bytes, header: Header) -> list[ErrorDetail]:
    sep = header.field_separator.encode("latin-1")
    seen: dict[str, int] = {}
    # Only each segment's first four bytes are looked at: decoded, not the whole segment.
    for segment in raw.replace(b"\n", b"\r").split(b"\r"):
        if not segment or segment.isspace():
            continue
        name = segment[:3].decode("latin-1")
        seen[name] = seen.get(name, 0) + 1
        if not is_segment_id(name) or (len(segment) > 3 and segment[3:4] != sep):
            text = segment[:21].decode("latin-1")
            shown = text[:20] + ("…" if len(segment) > 20 else "")
            return [
                ErrorDetail(
                    SEGMENT_SEQUENCE_ERROR,
                    f"segment {sum(seen.values())} ({shown!r}) does not start with a "
                    f"segment id and the field separator",
                    segment=name if is_segment_id(name) else "",
                    sequence=seen[name],
                )
            ]
    needed = REQUIRED.get(header.event, REQUIRED.get(header.message_type, ()))
    return [
        ErrorDetail(
            SEGMENT_SEQUENCE_ERROR,
            f"{header.event} without the {name} segment the hub needs to process it",
            segment=name,
        )
        for name in needed
        if name not in seen
    ]


def unit(raw: bytes, verdict: Verdict, origin: str | None) -> Unit:
    """The message as the store keeps it (see hub.store.messages.Unit): under its
    source (`<MSH-3.1>/<MSH-4.1>`), its external id the sender's application, facility
    and MSH-10, its event time MSH-7; refused ones carry their reason."""
    header = verdict.header
    if header is None:
        return Unit(
            raw=raw,
            external_id="sha256:" + hashlib.sha256(raw).hexdigest(),
            origin=origin,
            source=UNIDENTIFIED,
            error=verdict.reason,
        )
    source = header.source.strip() or UNIDENTIFIED
    if not source.isprintable() or len(source) > 100:
        source = UNIDENTIFIED
    return Unit(
        raw=raw,
        external_id=header.external_id,
        origin=origin,
        event_time=header.sent_at,
        source=source,
        error=verdict.reason,
    )


def units(raws: Sequence[bytes], adapter: Accepting, origin: str | None) -> list[Unit]:
    return [unit(raw, check(raw, adapter), origin) for raw in raws]
