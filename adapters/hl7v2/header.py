"""A message's header (MSH), read without parsing the rest of the message.

The receiver needs only the header to store a message (source, control id, event
time) and to acknowledge it, so it reads the MSH segment alone: cheap enough to do
for every message before its ACK leaves. Fields are kept as the text of their bytes
read as Latin-1, which maps each byte to one character and back, so that an ACK
echoing them gives the sender back the very bytes it sent, whatever MSH-18 names.

HL7 v2 numbers the MSH fields from the field separator: MSH-1 is the separator itself
and MSH-2 the encoding characters (component, repetition, escape, subcomponent and,
from v2.7, truncation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from hub.errors import Invalid

# HL7 table 0357 (message error condition codes) used at receipt.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
APPLICATION_INTERNAL_ERROR = "207"


class MalformedHeader(Invalid):
    """The MSH segment cannot be read; `field` names where (`MSH-9`), `code` is the HL7
    table 0357 condition."""

    def __init__(self, field: str, reason: str, code: str = REQUIRED_FIELD_MISSING) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Header:
    field_separator: str  # MSH-1
    encoding: str  # MSH-2: component, repetition, escape, subcomponent[, truncation]
    sending_application: str  # MSH-3, whole (components and all)
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    timestamp: str  # MSH-7 as written
    message_type: str  # MSH-9.1 (ADT)
    trigger: str  # MSH-9.2 (A01)
    structure: str  # MSH-9.3 (ADT_A01), empty when not sent
    control_id: str  # MSH-10
    processing_id: str  # MSH-11 (P, T, D; may have a mode component)
    version: str  # MSH-12.1 (2.5.1)
    accept_ack: str  # MSH-15 (AL, NE, ER, SU or empty)
    application_ack: str  # MSH-16
    charset: str  # MSH-18, first repetition (empty: ASCII)

    @property
    def component(self) -> str:
        return self.encoding[0]

    @property
    def repetition(self) -> str:
        return self.encoding[1]

    @property
    def escape(self) -> str:
        return self.encoding[2]

    @property
    def subcomponent(self) -> str:
        return self.encoding[3]

    @property
    def truncation(self) -> str | None:
        """v2.7's fifth encoding character, when the message declares one."""
        return self.encoding[4] if len(self.encoding) > 4 else None

    def first(self, value: str) -> str:
        """The first component of a field (`SndApp` of `SndApp^1.2.3^ISO`)."""
        return value.split(self.component, 1)[0]

    @property
    def source(self) -> str:
        """The source system the message is stored under: `<MSH-3.1>/<MSH-4.1>`, or
        `<MSH-3.1>` alone when MSH-4 is empty."""
        application = self.first(self.sending_application)
        facility = self.first(self.sending_facility)
        return f"{application}/{facility}" if facility else application

    @property
    def external_id(self) -> str:
        """The sending application, facility and MSH-10: one message of one sender."""
        return f"{self.sending_application}|{self.sending_facility}|{self.control_id}"

    @property
    def event(self) -> str:
        """MSH-9 as `type^trigger` (`ADT^A01`)."""
        return f"{self.message_type}^{self.trigger}" if self.trigger else self.message_type

    @property
    def enhanced(self) -> bool:
        """Enhanced acknowledgement mode: MSH-15 or MSH-16 valued (chapter 2.9.3)."""
        return bool(self.accept_ack or self.application_ack)

    @property
    def sent_at(self) -> datetime | None:
        """MSH-7 as an instant, when it is a valid DTM (None otherwise: not a reason to
        refuse the message)."""
        return parse_dtm(self.first(self.timestamp))


_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_MSH_END = re.compile(rb"[\r\n]")


def msh_segment(raw: bytes) -> str:
    """The MSH segment of a message, as Latin-1 text (see the module's docstring)."""
    start = raw.lstrip(b" \t\r\n\x0b")
    if not start.startswith(b"MSH"):
        raise MalformedHeader("MSH", "the message does not start with an MSH segment", "100")
    end = _MSH_END.search(start)
    return (start[: end.start()] if end else start).decode("latin-1")


def parse_header(raw: bytes) -> Header:
    """The header of `raw` (a whole message); `MalformedHeader` naming the field when
    it cannot be read."""
    segment = msh_segment(raw)
    if len(segment) < 8:
        raise MalformedHeader("MSH-2", "the encoding characters are missing")
    sep = segment[3]
    if sep.isalnum() or sep.isspace():
        raise MalformedHeader("MSH-1", f"{sep!r} cannot be the field separator", DATA_TYPE_ERROR)
    fields = segment.split(sep)
    encoding = fields[1]
    if not 4 <= len(encoding) <= 5 or len(set(encoding + sep)) != len(encoding) + 1:
        raise MalformedHeader(
            "MSH-2",
            f"{encoding!r} are not 4 or 5 distinct encoding characters "
            "(component, repetition, escape, subcomponent, truncation)",
            DATA_TYPE_ERROR,
        )
    if any(c.isalnum() or c.isspace() for c in encoding):
        raise MalformedHeader(
            "MSH-2", f"{encoding!r} holds a letter, digit or space", DATA_TYPE_ERROR
        )

    def field(n: int) -> str:
        """MSH-n (n >= 3): fields[n - 1], as MSH-1 is the separator itself."""
        return fields[n - 1] if len(fields) >= n else ""

    component = encoding[0]
    message_type = field(9).split(component)
    if not message_type[0]:
        raise MalformedHeader("MSH-9", "the message type is missing")
    control_id = field(10)
    if not control_id:
        raise MalformedHeader("MSH-10", "the message control id is missing")
    if not field(11):
        raise MalformedHeader("MSH-11", "the processing id is missing")
    version = field(12).split(component)[0]
    if not version:
        raise MalformedHeader("MSH-12", "the version id is missing")
    repetition = encoding[1]
    return Header(
        field_separator=sep,
        encoding=encoding,
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        timestamp=field(7),
        message_type=message_type[0],
        trigger=message_type[1] if len(message_type) > 1 else "",
        structure=message_type[2] if len(message_type) > 2 else "",
        control_id=control_id,
        processing_id=field(11),
        version=version,
        accept_ack=field(15),
        application_ack=field(16),
        charset=field(18).split(repetition)[0],
    )


_DTM = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?(?:([+-])(\d{2})(\d{2}))?\Z"
)


def parse_dtm(text: str) -> datetime | None:
    """An HL7 DTM/TS (`YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`) as an aware
    datetime (UTC when it names no offset), or None when it is not one."""
    m = _DTM.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, fraction, sign, oh, om = m.groups()
    try:
        tz = UTC
        if sign:
            offset = timedelta(hours=int(oh), minutes=int(om))
            tz = timezone(-offset if sign == "-" else offset)
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        ).astimezone(UTC)
    except ValueError:
        return None


def segment_ids(raw: bytes) -> list[str]:
    """The id of each segment (`MSH`, `PID`, ...), in order; a segment whose id is not
    three capitals or digits answers its first characters as they are."""
    out = []
    for segment in re.split(rb"\r\n|\r|\n", raw):
        if segment.strip():
            out.append(segment[:3].decode("latin-1"))
    return out


def is_segment_id(text: str) -> bool:
    return _SEGMENT_ID.match(text) is not None
