"""Acknowledgements (HL7 v2 chapter 2, 2.9 and the ACK message, MSA and ERR segments).

The ACK's MSH mirrors the message's: its sender is the message's receiver and the other
way round (MSH-3/4 <-> MSH-5/6), MSH-9 is `ACK^<trigger>^ACK`, MSH-11, MSH-12 and MSH-18
are echoed (a sender that wrote MSH-18 reads the ACK in the same character set; the
fields echoed are the very bytes it sent). MSA-2 echoes MSH-10.

Original mode (MSH-15 and MSH-16 empty): AA accepted, AE error in the content, AR
rejected. Enhanced mode: the accept acknowledgement CA, CE or CR, sent as MSH-15 asks
(AL always, NE never, ER only on an error, SU only on success; empty means AL), and
later the application acknowledgement AA, AE or AR, once processed, as MSH-16 asks.

An ERR segment per error names where it is and why: from v2.5 on, ERR-2 (segment,
sequence, field, ...), ERR-3 (HL7 table 0357), ERR-4 (severity) and ERR-8 (text); before
v2.5, ERR-1 (segment^sequence^field^code&text&HL70357).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from adapters.hl7v2.header import Header

ACCEPT, ERROR, REJECT = "accept", "error", "reject"
_ORIGINAL = {ACCEPT: "AA", ERROR: "AE", REJECT: "AR"}
_ENHANCED = {ACCEPT: "CA", ERROR: "CE", REJECT: "CR"}

# Table 0357 descriptions of the codes the hub sends.
CONDITIONS = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


class Severity(StrEnum):
    ERROR = "E"
    WARNING = "W"
    INFORMATION = "I"


@dataclass(frozen=True)
class ErrorDetail:
    """One ERR segment: where (segment id, its sequence in the message, field,
    component), the table 0357 condition, and a reason a person can read."""

    code: str
    text: str
    segment: str = "MSH"
    sequence: int = 1
    field: int | None = None
    component: int | None = None
    severity: Severity = Severity.ERROR


def code_for(header: Header | None, outcome: str) -> str:
    """MSA-1 for an outcome (accept, error, reject) in the message's mode."""
    enhanced = header is not None and header.enhanced
    return (_ENHANCED if enhanced else _ORIGINAL)[outcome]


def wanted(header: Header | None, outcome: str) -> bool:
    """Whether the sender asked for an accept acknowledgement of this outcome (MSH-15)."""
    if header is None or not header.enhanced:
        return True  # original mode: always
    asked = header.accept_ack.upper()
    if asked == "NE":
        return False
    if asked == "ER":
        return outcome != ACCEPT
    if asked == "SU":
        return outcome == ACCEPT
    return True  # AL, or empty beside a valued MSH-16


def wanted_application(header: Header | None, outcome: str) -> bool:
    """Whether the sender asked for an application acknowledgement of this processing
    outcome (MSH-16, enhanced mode only): AL always, ER on an error, SU on success."""
    if header is None or not header.enhanced:
        return False
    asked = header.application_ack.upper()
    if asked == "AL":
        return True
    if asked == "ER":
        return outcome != ACCEPT
    if asked == "SU":
        return outcome == ACCEPT
    return False  # NE, or empty beside a valued MSH-15


_counter = itertools.count(1)
_PROCESS = f"{os.getpid() % 10000:04d}"


def control_id() -> str:
    """A control id for an ACK: unique in this process and across restarts, at most 20
    characters (the v2.5 length of MSH-10)."""
    return f"A{int(time.time()) % 10**9:09d}{_PROCESS}{next(_counter) % 10**6:06d}"


def timestamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


_ESCAPES = {"F": 0, "S": 1, "R": 2, "E": 3, "T": 4}


def escape(text: str, header: Header) -> str:
    """Text for a field: separators and encoding characters as escape sequences."""
    sep, enc = header.field_separator, header.encoding
    component, repetition, esc, subcomponent = enc[0], enc[1], enc[2], enc[3]
    table = {
        esc: f"{esc}E{esc}",
        sep: f"{esc}F{esc}",
        component: f"{esc}S{esc}",
        repetition: f"{esc}R{esc}",
        subcomponent: f"{esc}T{esc}",
    }
    if header.truncation:
        table[header.truncation] = f"{esc}P{esc}"
    text = " ".join(text.split())  # no segment ends inside a field
    return "".join(table.get(c, c) for c in text)


def _at_least_25(version: str) -> bool:
    parts = version.split(".")
    try:
        numbers = [int(p) for p in parts[:2]]
    except ValueError:
        return True
    return numbers >= [2, 5]


def build(
    header: Header,
    outcome: str,
    errors: Sequence[ErrorDetail] = (),
    *,
    text: str | None = None,
    at: datetime | None = None,
    ack_control_id: str | None = None,
    application: bool = False,
) -> bytes:
    """The ACK of a message whose header is `header`, as bytes ended by `\\r`.
    `application`: the application acknowledgement (AA, AE, AR) of enhanced mode, sent
    once the message is processed."""
    sep, enc = header.field_separator, header.encoding
    c = enc[0]
    msh = [
        "MSH",
        enc,
        header.receiving_application,
        header.receiving_facility,
        header.sending_application,
        header.sending_facility,
        timestamp(at),
        "",
        f"ACK{c}{header.trigger}{c}ACK" if header.trigger else f"ACK{c}{c}ACK",
        ack_control_id or control_id(),
        header.processing_id,
        header.version,
    ]
    if header.charset:
        msh += ["", "", "", "", "", header.charset]
    code = _ORIGINAL[outcome] if application else code_for(header, outcome)
    msa = ["MSA", code, header.control_id]
    if text and outcome != ACCEPT:
        msa.append(escape(text, header)[:80])  # MSA-3: kept for senders before v2.4
    segments = [sep.join(msh), sep.join(msa)]
    modern = _at_least_25(header.version)
    for e in errors:
        described = escape(e.text, header)
        condition = f"{e.code}{c}{CONDITIONS.get(e.code, '')}{c}HL70357"
        if modern:
            location = c.join(
                [
                    e.segment,
                    str(e.sequence),
                    str(e.field) if e.field is not None else "",
                    "",
                    str(e.component) if e.component is not None else "",
                ]
            ).rstrip(c)
            segments.append(
                sep.join(["ERR", "", location, condition, e.severity.value, "", "", "", described])
            )
        else:
            sub = enc[3]
            eld = c.join(
                [
                    e.segment,
                    str(e.sequence),
                    str(e.field) if e.field is not None else "",
                    sub.join([e.code, escape(CONDITIONS.get(e.code, e.text), header), "HL70357"]),
                ]
            )
            segments.append(sep.join(["ERR", eld]))
    return "".join(s + "\r" for s in segments).encode("latin-1", "replace")


def build_unreadable(raw: bytes, errors: Sequence[ErrorDetail], text: str) -> bytes:
    """An AR for a message whose MSH cannot be read: from what can be read of it (the
    separators when they are sane, else `|^~\\&`; MSH-10 and the applications when
    present), so that a sender can still match it to what it sent."""
    from adapters.hl7v2.header import Header

    line = raw.lstrip(b" \t\r\n\x0b").split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    sep, enc = "|", "^~\\&"
    if line.startswith("MSH") and len(line) > 8:
        candidate_sep, candidate_enc = line[3], line[4:].split(line[3], 1)[0]
        sane = not candidate_sep.isalnum() and not candidate_sep.isspace()
        if (
            sane
            and 4 <= len(candidate_enc) <= 5
            and not any(ch.isalnum() or ch.isspace() for ch in candidate_enc)
        ):
            sep, enc = candidate_sep, candidate_enc
    fields = line.split(sep) if line.startswith("MSH") else ["MSH"]

    def field(n: int) -> str:
        return fields[n - 1] if len(fields) >= n and n >= 3 else ""

    header = Header(
        field_separator=sep,
        encoding=enc,
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        timestamp="",
        message_type="ACK",
        trigger=field(9).split(enc[0])[1] if len(field(9).split(enc[0])) > 1 else "",
        structure="",
        control_id=field(10),
        processing_id=field(11) or "P",
        version=field(12).split(enc[0])[0] or "2.5",
        accept_ack="",
        application_ack="",
        charset=field(18).split(enc[1])[0],
    )
    return build(header, REJECT, errors, text=text)
