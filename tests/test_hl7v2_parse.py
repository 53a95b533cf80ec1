"""HL7 v2 parsing: delimiters from MSH-1/MSH-2 (a fifth, truncation, character included),
repetitions, components, subcomponents, escape sequences, MSH-18 character sets, and bad
input that always becomes `MappingError` naming the segment and field."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.hl7v2.adapter import Hl7v2Adapter, external_id
from adapters.hl7v2.parse import charset_of, parse, read
from hub.errors import Invalid
from hub.ingest.mapping import MappingError
from hub.ingest.mapping_tree import Path as V2Path

DATA = Path(__file__).parent / "data" / "hl7v2"
MSH = "MSH|^~\\&|APP|FAC|HUB|HUB|20240102030405||ADT^A01^ADT_A01|CTRL1|P|2.5.1"


def message(*segments: str, msh: str = MSH) -> bytes:
    return "\r".join([msh, *segments]).encode()


def test_fields_repetitions_components_and_subcomponents() -> None:
    tree = parse(message("PID|1||123^^^HOSP&1.2.3&ISO^MR~456^^^DMV^DL||Doe^Jane^Q"))
    pid = tree.first("PID")
    assert pid is not None
    assert pid.field(3) == [
        [["123"], [""], [""], ["HOSP", "1.2.3", "ISO"], ["MR"]],
        [["456"], [""], [""], ["DMV"], ["DL"]],
    ]
    assert tree["PID-3.1"] == "123"
    assert tree.text("PID-3[2].1") == "456"
    assert tree.text("PID-3.4.2") == "1.2.3"
    assert tree.text("PID-5.2") == "Jane"
    assert tree.text("PID-5") == "Doe"  # a field's text: its first component
    assert tree.get("PID-99", "") == "" and tree.get("ZZZ-1") is None


def test_msh_1_and_2_are_the_delimiters_and_msh_fields_are_numbered_from_them() -> None:
    tree = parse(message())
    assert tree.text("MSH-1") == "|"
    assert tree.text("MSH-2") == "^~\\&"
    assert tree.text("MSH-3") == "APP"
    assert (tree.text("MSH-9.1"), tree.text("MSH-9.2"), tree.text("MSH-9.3")) == (
        "ADT",
        "A01",
        "ADT_A01",
    )
    assert tree.text("MSH-10") == "CTRL1"


def test_other_delimiters_are_taken_from_the_header() -> None:
    msh = "MSH#$*/!#APP#FAC#HUB#HUB#20240102##ADT$A08#C9#P#2.5"
    tree = parse(message("PID#1##7$$$AUTH!1.2!ISO*8##Roe$Ann", msh=msh))
    assert tree.text("MSH-9.2") == "A08"
    assert tree.text("PID-3.4.2") == "1.2"
    assert tree.text("PID-3[2].1") == "8"
    assert tree.text("PID-5.2") == "Ann"


def test_a_fifth_encoding_character_is_the_truncation_character_not_a_separator() -> None:
    tree = parse((DATA / "ig-ORM_O01.hl7").read_bytes())
    assert tree.text("MSH-2") == "^~\\&#"
    assert tree.text("PID-5.1") == "Everywoman"
    assert tree.text("PID-3.4.2") == "1.2.3.4.5"  # subcomponents still split on &
    assert tree.text("ORC-2.1") == "ORD777889"
    # `#` in a value is text, and \P\ stands for it.
    own = parse(message("NTE|1||A#B \\P\\ C", msh=MSH.replace("^~\\&", "^~\\&#")))
    assert own.text("NTE-3") == "A#B # C"


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("line 1\\.br\\line 2", "line 1\nline 2"),
        ("caf\\XC3A9\\", "café"),
        ("\\H\\bold\\N\\ text", "bold text"),  # highlighting carries no text of its own
        ("no closing \\F", "no closing \\F"),  # an unfinished escape: text as sent
    ],
)
def test_escape_sequences_are_decoded(escaped: str, text: str) -> None:
    tree = parse(message(f"NTE|1||{escaped}"))
    assert tree.text("NTE-3") == text


def test_an_escaped_delimiter_does_not_split() -> None:
    tree = parse(message("NTE|1||one\\S\\two\\R\\three"))
    nte = tree.first("NTE")
    assert nte is not None and nte.field(3) == [[["one^two~three"]]]


def test_a_bad_hexadecimal_escape_names_its_field() -> None:
    with pytest.raises(MappingError) as caught:
        parse(message("PID|1||X||Doe\\XZZ\\"))
    assert caught.value.field == "PID-5"
    assert isinstance(caught.value, Invalid)


def test_segments_may_end_with_cr_lf_or_crlf_and_blank_lines_are_skipped() -> None:
    body = [MSH, "PID|1||1", "", "PV1|1|I"]
    for end in ("\r", "\n", "\r\n"):
        tree = parse(end.join(body).encode() + end.encode())
        assert [s.name for s in tree.segments] == ["MSH", "PID", "PV1"]


def test_z_segments_are_kept() -> None:
    tree = parse(message("PID|1||1", "ZPI|1|VIP^Very important~X|A&B"))
    assert [s.name for s in tree.segments] == ["MSH", "PID", "ZPI"]
    assert tree.text("ZPI-2.2") == "Very important"
    assert tree.text("ZPI-2[2]") == "X"
    assert tree.text("ZPI-3.1.2") == "B"


def test_segments_of_one_name_are_numbered() -> None:
    tree = parse((DATA / "ig-ORU_R01.hl7").read_bytes())
    assert [s.label() for s in tree.all("OBX")] == ["OBX", "OBX[2]", "OBX[3]"]
    assert tree.text("OBX[2]-5") == "0.59"
    assert V2Path.parse("OBX[2]-5[3].4.1") == V2Path("OBX", 2, 5, 3, 4, 1)


def test_msh_18_names_the_character_set() -> None:
    msh = MSH + "|||||USA|8859/1"
    raw = msh.encode() + "\rPID|1||1||Müller^Zoë".encode("iso8859-1")
    assert charset_of(raw) == "8859/1"
    tree = parse(raw)
    assert tree.text("PID-5.1") == "Müller" and tree.text("PID-5.2") == "Zoë"
    # \X..\ bytes are read in the message's character set too.
    latin = parse(msh.encode() + b"\rNTE|1||M\\XFC\\ller")
    assert latin.text("NTE-3") == "Müller"


def test_utf8_by_default_and_a_per_source_default_for_an_empty_msh_18() -> None:
    utf8 = parse(message("PID|1||1||Łukasz"))
    assert utf8.text("PID-5") == "Łukasz"
    latin_bytes = MSH.encode() + "\rPID|1||1||Ångström".encode("iso8859-1")
    with pytest.raises(MappingError) as caught:
        parse(latin_bytes)  # not UTF-8: rejected, naming where
    assert caught.value.field == "PID-5"
    assert parse(latin_bytes, default_charset="8859/1").text("PID-5") == "Ångström"


def test_the_adapter_takes_the_source_default_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUB_HL7V2_SOURCE_CHARSETS", '{"APP/FAC": "8859/1"}')
    from hub.settings import get_settings

    get_settings.cache_clear()
    try:
        adapter = Hl7v2Adapter()
    finally:
        get_settings.cache_clear()
    raw = MSH.encode() + "\rPID|1||1||Ångström".encode("iso8859-1")
    assert adapter.charset_for("APP/FAC") == "8859/1"
    assert adapter.parse(raw).text("PID-5") == "Ångström"


def test_declared_ascii_holding_utf8_is_read_as_utf8() -> None:
    # The IG's own ORM_O01 says ASCII (MSH-18) and carries a UTF-8 character (IN1-10).
    tree = parse((DATA / "ig-ORM_O01.hl7").read_bytes())
    assert tree.text("IN1-10") == "[check on workman\ufffds comp]"


def test_an_unknown_character_set_is_rejected_naming_msh_18() -> None:
    with pytest.raises(MappingError) as caught:
        parse((MSH + "|||||USA|KLINGON").encode() + b"\rPID|1")
    assert caught.value.field == "MSH-18"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"PID|1||1", None),  # no MSH
        (b"MSH", None),
        (b"MSH|", None),
        (b"MSH|^~\\&|A\rP-D|x", None),  # a segment name that is not one
        (b"MSH|^~\\&|A\rpid|x", None),
    ],
)
def test_malformed_messages_are_invalid(raw: bytes, field: str | None) -> None:
    with pytest.raises(MappingError) as caught:
        parse(raw)
    assert caught.value.field == field


def test_external_id_is_sender_facility_and_control_id() -> None:
    # The sender's fields as sent: another application with the same namespace id is not
    # the same sender.
    assert external_id((DATA / "ig-ADT_A01.hl7").read_bytes()) == (
        "SndApp^1.2.3.4.5.2^ISO|SndFac^1.2.3.4.5.1^ISO|4637382"
    )
    assert Hl7v2Adapter().source_of((DATA / "ig-ORU_R01.hl7").read_bytes()) == "LabApp/LabFac"


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FF)
    | st.sampled_from(list("|^~\\&#\r\nXF.brH")),
    max_size=200,
)


@settings(max_examples=400, deadline=None)
@given(segment=_TEXT, header=st.sampled_from(["^~\\&", "^~\\&#", "^~", "^", "^~\\&#x"]))
def test_the_parser_never_fails_otherwise_than_invalid(segment: str, header: str) -> None:
    raw = f"MSH|{header}|A|B|C|D|20240101||ADT^A01|1|P|2.5\r{segment}".encode(
        "utf-8", "surrogatepass"
    )
    try:
        tree = parse(raw)
    except MappingError as e:
        # Named: a segment, or a segment and field, or the header.
        assert e.field is None or e.field[:3].isalnum() or e.field.startswith("MSH")
        return
    assert tree.segments[0].name == "MSH"
    for seg in tree.segments:
        for number in range(1, len(seg.fields)):
            for rep in seg.field(number):
                assert all(isinstance(s, str) for c in rep for s in c)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_after_a_header_never_crash(raw: bytes) -> None:
    with contextlib.suppress(MappingError):
        parse(MSH.encode() + b"\r" + raw)


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.hl7")))
def test_read_gives_what_the_tree_gives(name: str) -> None:
    """The receiver's quick read of a message's key fields agrees with the full parse."""
    raw = (DATA / f"{name}.hl7").read_bytes()
    places = [
        "MSH-3", "MSH-3.2", "MSH-4.1", "MSH-9.2", "MSH-10", "PID-3", "PID-3.1", "PID-3.4.2",
        "PID-5.1", "PID-5.2", "PID-7", "PID-99.1", "PV1-19", "OBX-5", "ZZZ-1",
    ]  # fmt: skip
    try:
        tree = parse(raw)
    except MappingError:
        return  # a message the parser refuses has no key to read
    assert read(raw, places) == [tree.text(p) for p in places]


def test_read_leaves_other_places_to_the_tree() -> None:
    raw = (DATA / "ig-ADT_A01.hl7").read_bytes()
    assert read(raw, ["PID-5[2].1"]) is None
    assert read(raw, ["OBX[2]-5"]) is None
    assert read(raw, ["PID-3.1|PID-2"]) is None
