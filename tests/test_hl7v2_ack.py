"""ACKs (HL7 v2 chapter 2), the MSH header and MLLP framing, as pure functions."""

from __future__ import annotations

import io

import hl7
import pytest

from adapters.hl7v2 import ack
from adapters.hl7v2.ack import ACCEPT, ERROR, REJECT, ErrorDetail
from adapters.hl7v2.framing import Deframer, frame, split_stream
from adapters.hl7v2.header import MalformedHeader, parse_header
from tests.mllp_fixtures import adt, sample


def test_ack_mirrors_the_header_and_echoes_the_control_id() -> None:
    header = parse_header(sample("ORU_R01"))
    built = ack.build(header, ACCEPT, ack_control_id="X1")
    msh = hl7.parse(built.decode()).segment("MSH")
    assert str(msh[2]) == "^~\\&#"  # the truncation character is kept
    assert (str(msh[3]), str(msh[4])) == ("OrdApp^1.2.3.4.5^ISO", "OrdFac^2.3.4.4^ISO")
    assert (str(msh[5]), str(msh[6])) == ("LabApp^9.8.7.6.5^ISO", "LabFac^8.7.6.4^ISO")
    assert (str(msh[9]), str(msh[10]), str(msh[11]), str(msh[12])) == (
        "ACK^R01^ACK",
        "X1",
        "P",
        "2.5.1",
    )
    assert str(msh[18]) == "UNICODE UTF-8"  # MSH-18 echoed: the sender reads it as it wrote
    assert str(hl7.parse(built.decode()).segment("MSA")) == "MSA|CA|20251014154001-425"


@pytest.mark.parametrize(
    ("msh15", "msh16", "outcome", "code", "sent"),
    [
        ("", "", ACCEPT, "AA", True),
        ("", "", ERROR, "AE", True),
        ("", "", REJECT, "AR", True),
        ("AL", "NE", ACCEPT, "CA", True),
        ("AL", "AL", ERROR, "CE", True),
        ("AL", "", REJECT, "CR", True),
        ("NE", "AL", ACCEPT, "CA", False),
        ("ER", "AL", ACCEPT, "CA", False),
        ("ER", "AL", REJECT, "CR", True),
        ("SU", "AL", ACCEPT, "CA", True),
        ("SU", "AL", ERROR, "CE", False),
        ("", "AL", ACCEPT, "CA", True),
    ],
)
def test_original_and_enhanced_modes(
    msh15: str, msh16: str, outcome: str, code: str, sent: bool
) -> None:
    header = parse_header(adt("C1", msh15=msh15, msh16=msh16))
    assert ack.code_for(header, outcome) == code
    assert ack.wanted(header, outcome) is sent


def test_err_names_segment_sequence_field_and_reason_escaped() -> None:
    header = parse_header(adt("E1"))
    detail = ErrorDetail(
        "102", "PID-7 is not a date | ^ & ~ \\", segment="PID", sequence=1, field=7
    )
    built = ack.build(header, ERROR, [detail], text=detail.text)
    err = next(s for s in built.decode().split("\r") if s.startswith("ERR"))
    assert err.startswith("ERR||PID^1^7|102^Data type error^HL70357|E|")
    assert err.endswith("PID-7 is not a date \\F\\ \\S\\ \\T\\ \\R\\ \\E\\")
    # Before v2.5: ERR-1 (ELD) instead.
    old = parse_header(adt("E2").replace(b"|2.5.1", b"|2.3"))
    assert b"ERR|PID^1^7^102&Data type error&HL70357\r" in ack.build(old, ERROR, [detail])


def test_unreadable_header_still_gets_an_ar_the_sender_can_match() -> None:
    built = ack.build_unreadable(b"MSH|^~\\&|A|B|C|D||x|ADT^A01|77|P|", [], "MSH-12 missing")
    assert str(hl7.parse(built.decode()).segment("MSA")) == "MSA|AR|77|MSH-12 missing"
    assert ack.build_unreadable(b"garbage", [], "no MSH").startswith(b"MSH|^~\\&|")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"PID|1\r", "MSH"),
        (b"MSH|^~\r", "MSH-2"),
        (b"MSH|^~\\&|A|B|||x||||P|2.5\r", "MSH-9"),
        (b"MSH|^~\\&|A|B|||x||ADT^A01||P|2.5\r", "MSH-10"),
        (b"MSH|^~\\&|A|B|||x||ADT^A01|1||2.5\r", "MSH-11"),
        (b"MSHA^~\\&|", "MSH-1"),
        (b"MSH|^^\\&|", "MSH-2"),
    ],
)
def test_malformed_header_names_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(MalformedHeader) as e:
        parse_header(raw)
    assert e.value.field == field


def test_header_fields() -> None:
    h = parse_header(sample("ADT_A01"))
    assert (h.source, h.event, h.structure, h.control_id, h.version) == (
        "SndApp/SndFac",
        "ADT^A01",
        "ADT_A01",
        "4637382",
        "2.5.1",
    )
    assert (h.accept_ack, h.application_ack, h.charset, h.truncation) == ("AL", "NE", "ASCII", None)
    assert parse_header(sample("ORM_O01")).truncation == "#"
    assert parse_header(adt("1", facility="")).source == "SndApp"


def test_deframer_handles_junk_splits_packing_and_size() -> None:
    one, two = adt("1"), adt("2")
    data = b"junk" + frame(one) + frame(two) + b"\x0b" + b"x" * 9000 + b"\x1c\r" + frame(one)
    for step in (1, 5, 64, len(data)):
        d, found, junk, big = Deframer(max_frame=4096), [], 0, 0
        for i in range(0, len(data), step):
            f = d.feed(data[i : i + step])
            found += f.messages
            junk, big = junk + f.junk, big + f.oversized
        assert (found, junk, big) == ([one, two, one], 4, 1), step
    d = Deframer()
    d.feed(b"\x0bMSH|abc")
    assert d.partial == 7


def test_split_stream_line_ends_and_framing() -> None:
    one, two = adt("1"), adt("2")
    for text in (
        one + two,
        (one + two).replace(b"\r", b"\n"),
        (one + two).replace(b"\r", b"\r\n"),
        frame(one) + b"\n" + frame(two),
        frame(one) + two.replace(b"\r", b"\r\n") + b"\n\n",
        b"\xef\xbb\xbf" + one + two[:-1],
    ):
        for chunk in (1, 3, 1 << 16):
            assert list(split_stream(io.BytesIO(text), chunk)) == [one, two]
