"""HL7 v2 messages as trees: python-hl7 splits, this module decodes.

python-hl7 (`hl7.parse`) splits a message on its own encoding characters
(MSH-1, MSH-2); its containers are only as deep as the text needs, so they are
made regular here (field -> repetitions -> components -> subcomponents, see
`hub.ingest.mapping_tree`) and every leaf has its escape sequences decoded.
What python-hl7 leaves to its callers is done here as well:

- the character set: MSH-18 names it (`UNICODE UTF-8`, `8859/1`, ...); an empty
  MSH-18 takes the source's default (HUB_HL7V2_SOURCE_CHARSETS, then
  HUB_HL7V2_CHARSET). A message declared `ASCII` that holds other bytes is read as
  UTF-8, which most such senders mean; bytes the character set cannot read reject
  the message, naming the segment and field;
- a fifth encoding character (v2.7's truncation character, `^~\\&#`) is taken
  as such: it is not a separator, and is kept as text in values;
- escape sequences: `\\F\\ \\S\\ \\T\\ \\R\\ \\E\\` (the delimiters), `\\Xhh..\\` (bytes,
  read in the message's character set), `\\.br\\` (a line break), `\\P\\` (the
  truncation character); formatting (`\\H\\ \\N\\ \\.sp\\ ...`) and unknown
  sequences are dropped, their text kept;
- segments end at CR, LF or CR LF; Z-segments are kept like any other.

Anything wrong with the input raises `MappingError` naming the segment and
field (`PID-7`), never another exception: a unit that cannot be read is stored
and rejected, and the others go on.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hl7
from hl7.exceptions import HL7Exception

from hub.ingest.mapping import MappingError
from hub.ingest.mapping_tree import Component, Repetition, Segment, Tree

_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "ISO IR6": "ascii",
    "ISO IR100": "iso8859-1",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc-kr",
    "BIG-5": "big5",
    "CNS 11643-1992": "big5",
}


def codec(charset: str) -> str:
    """The Python codec of an MSH-18 value (or of a codec name); `MappingError` if unknown."""
    name = _CHARSETS.get(charset.strip().upper(), charset.strip())
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise MappingError(f"unknown character set '{charset}'", "MSH-18") from None


def _header(raw: bytes) -> tuple[str, list[str]]:
    """The MSH line's fields, read as ASCII (the header's own characters are ASCII)."""
    end = len(raw)
    for stop in (b"\r", b"\n"):
        at = raw.find(stop)
        if 0 <= at < end:
            end = at
    line = raw[:end].decode("latin-1")
    if not line.startswith("MSH") or len(line) < 8:
        raise MappingError("a message starts with an MSH segment and its encoding characters")
    return line, line[4:].split(line[3])


def charset_of(raw: bytes, default: str = "UTF-8") -> str:
    """The character set a message is written in: its MSH-18 (first repetition), else
    `default`."""
    line, fields = _header(raw)
    declared = fields[16] if len(fields) > 16 else ""
    rep = line[4:8][1:2] or "~"
    comp = line[4:5] or "^"
    declared = declared.split(rep)[0].split(comp)[0].strip()
    return declared or default


def _decode(raw: bytes, charset: str) -> str:
    name = codec(charset)
    try:
        return raw.decode(name)
    except UnicodeDecodeError as e:
        if name == "ascii":
            try:
                return raw.decode("utf-8")  # declared ASCII, written as UTF-8: a common lie
            except UnicodeDecodeError:
                pass
        where = _where(raw, e.start)
        raise MappingError(f"byte 0x{raw[e.start]:02x} is not {charset} text", where) from None


def _where(raw: bytes, offset: int) -> str | None:
    """The segment and field (`PID-11`) at a byte offset of a message."""
    before = raw[:offset].replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    line = before.rsplit(b"\r", 1)[-1].decode("latin-1")
    name = line[:3]
    separator = raw[3:4].decode("latin-1") or "|"
    number = line.count(separator) + (1 if name == "MSH" else 0)
    return f"{name}-{number}" if _SEGMENT_NAME.match(name) else None


class _Escapes:
    """Decodes the escape sequences of one message (its delimiters and character set)."""

    def __init__(
        self, field: str, component: str, repetition: str, escape: str, sub: str, trunc: str
    ) -> None:
        self.escape = escape
        self.named = {"F": field, "S": component, "T": sub, "R": repetition, "E": escape}
        if trunc:
            self.named["P"] = trunc
        self.codec = "utf-8"

    def decode(self, text: str, where: str) -> str:
        esc = self.escape
        if not esc or esc not in text:
            return text
        out: list[str] = []
        at = 0
        while True:
            start = text.find(esc, at)
            if start < 0:
                out.append(text[at:])
                break
            end = text.find(esc, start + 1)
            if end < 0:  # an escape character without its closing one: text as sent
                out.append(text[at:])
                break
            out.append(text[at:start])
            out.append(self._sequence(text[start + 1 : end], where))
            at = end + 1
        return "".join(out)

    def _sequence(self, body: str, where: str) -> str:
        if body in self.named:
            return self.named[body]
        if body == ".br":
            return "\n"
        if body[:1] in ("X", "x") and len(body) > 1:
            digits = body[1:]
            try:
                data = bytes.fromhex(digits)
            except ValueError:
                raise MappingError(f"'\\{body}\\' is not a hexadecimal escape", where) from None
            return data.decode(self.codec, errors="replace")
        # Highlighting (\H\ \N\), formatting (\.sp\ \.in\ ...), character set switches
        # (\C..\ \M..\) and application escapes (\Z..\) carry no text of their own.
        return ""


def _regular(node: Any, depth: int, decode: Callable[[str], str] | None) -> Any:
    """python-hl7's node as `depth` levels of lists (it nests only as deep as the text),
    each leaf through `decode` (escape sequences)."""
    if depth == 0:
        text = node if isinstance(node, str) else str(node)
        return decode(text) if decode is not None else text
    if isinstance(node, str):
        node = [node]
    return [_regular(child, depth - 1, decode) for child in node]


def _lines(raw: bytes, default_charset: str) -> tuple[list[str], str, str, _Escapes]:
    """A message's segments (decoded, blank lines gone), its field separator, MSH-2 and its
    escapes; `MappingError` on bad input."""
    charset = charset_of(raw, default_charset)
    text = _decode(raw, charset)
    if "\n" in text:  # segments end at CR, LF or CR LF (a regex split is ten times dearer)
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = [line for line in text.split("\r") if line and not line.isspace()]
    line = lines[0] if lines else ""
    if not line.startswith("MSH") or len(line) < 8:
        raise MappingError("a message starts with an MSH segment and its encoding characters")
    field_sep = line[3]
    encoding = line[4:].split(field_sep, 1)[0]
    if len(encoding) < 2 or field_sep in encoding or field_sep.isalnum():
        raise MappingError(f"MSH-2 '{encoding}' does not hold the encoding characters", "MSH-2")
    component = encoding[0]
    repetition = encoding[1] if len(encoding) > 1 else "~"
    escape = encoding[2] if len(encoding) > 2 else ""
    sub = encoding[3] if len(encoding) > 3 else "&"
    trunc = encoding[4] if len(encoding) > 4 else ""
    escapes = _Escapes(field_sep, component, repetition, escape, sub, trunc)
    escapes.codec = codec(charset)
    return lines, field_sep, encoding, escapes


def _prepared(raw: bytes, default_charset: str) -> tuple[str, str, str, _Escapes]:
    """`_lines`, the segments joined by `\\r` (what python-hl7 splits)."""
    lines, field_sep, encoding, escapes = _lines(raw, default_charset)
    return "\r".join(lines), field_sep, encoding, escapes


# A place read without the tree: segment, field, and optionally component and subcomponent.
_PLAIN_PLACE = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def read(raw: bytes, places: Sequence[str], default_charset: str = "UTF-8") -> list[str] | None:
    """The text at each of `places` (`PID-3.1`: the first segment of that name, the first
    repetition, the component and subcomponent, escapes decoded, stripped), as `parse(raw)`
    would give it, read off the message's lines without building the tree: what the receiver
    needs of a message (its order key) at a fraction of the cost. None when a place is not of
    that plain form (a repetition, a segment index, alternatives): parse then."""
    found = [_PLAIN_PLACE.fullmatch(place) for place in places]
    if not all(found):
        return None
    lines, field_sep, encoding, escapes = _lines(raw, default_charset)
    component, repetition = escapes.named["S"], escapes.named["R"]
    sub = escapes.named["T"]
    out: list[str] = []
    for match in found:
        assert match is not None
        name, number = match.group(1), int(match.group(2))
        line = next((x for x in lines if x[:3] == name and x[3:4] == field_sep), None)
        fields = line.split(field_sep) if line is not None else []
        if name == "MSH":  # MSH-1 is the separator itself: MSH-n is fields[n - 1]
            if number in (1, 2):
                out.append(field_sep if number == 1 else encoding)
                continue
            number -= 1
        value = fields[number].split(repetition)[0] if 0 < number < len(fields) else ""
        value = _nth(value.split(component), match.group(3))
        value = _nth(value.split(sub), match.group(4))
        out.append(escapes.decode(value, f"{name}-{match.group(2)}").strip())
    return out


def _nth(parts: list[str], number: str | None) -> str:
    at = int(number or 1) - 1
    return parts[at] if at < len(parts) else ""


def parse(raw: bytes, default_charset: str = "UTF-8") -> Tree:
    """A message's bytes as a tree (see the module docstring); `MappingError` on bad input."""
    text, field_sep, encoding, escapes = _prepared(raw, default_charset)
    escape = escapes.escape
    try:
        parsed = hl7.parse(text)
    except (HL7Exception, IndexError, ValueError) as e:
        raise MappingError(f"the message cannot be split: {e}", "MSH") from None
    segments: list[Segment] = []
    for number, seg in enumerate(parsed):
        name = str(seg[0]).strip() if len(seg) else ""
        if not _SEGMENT_NAME.match(name):
            raise MappingError(f"segment {number + 1} has no valid name ('{name[:10]}')")
        fields: list[Any] = [[[[name]]]]
        if name == "MSH" and number == 0:
            # MSH-1 and MSH-2 are the delimiters themselves: kept as text, not decoded.
            fields += [[[[field_sep]]], [[[encoding]]]]
        for index in range(len(fields), len(seg)):
            label = f"{name}-{index}"
            value = seg[index]
            decode = (lambda text, at=label: escapes.decode(text, at)) if escape else None
            fields.append(_regular(value, 3, decode))
        segments.append(Segment(name, fields))
    if not segments or segments[0].name != "MSH":
        raise MappingError("a message starts with an MSH segment")
    return Tree(segments)


def header_fields(tree: Tree) -> Mapping[str, str]:
    """The MSH values a message map is chosen by."""
    return {
        "type": tree.text("MSH-9.1"),
        "trigger": tree.text("MSH-9.2"),
        "structure": tree.text("MSH-9.3"),
        "application": tree.text("MSH-3.1"),
        "facility": tree.text("MSH-4.1"),
    }


def source_of(application: str, facility: str) -> str:
    """The source string of a sender: `<MSH-3.1>/<MSH-4.1>`, or `<MSH-3.1>` alone."""
    return f"{application}/{facility}" if facility else application


# Keep the aliases the type checker needs for the nested lists visible to readers.
__all__ = ["Component", "Repetition", "charset_of", "codec", "parse", "source_of"]
