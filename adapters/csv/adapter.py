"""CSV files: each row is one unit, stored with the header so it parses on its own.

Files stream in constant memory: rows are read one at a time. A unit's raw
bytes are the header line and the row, as CSV; its external id is the
mapping name and a digest of those bytes, so an identical resend is a
duplicate while a corrected row is a new message (that updates the same
resources, whose ids come from the mapping's key columns).

A cell longer than HUB_CSV_MAX_CELL_CHARS makes its row a bad row: stored like
any other, and rejected when parsed, naming its line and column; the rest of
the file goes on. The csv module's own field limit is process-wide: it is
raised to that size, never lowered, and a row it still refuses is read by hand
(`_Record`), so that its column is named and the next row starts where it
should.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from pathlib import Path
from typing import IO

from hub.ingest.adapters import Unit
from hub.ingest.mapping import Mapped, Mapper, MappingError
from hub.settings import get_settings

# Bytes that are not UTF-8 are carried as lone surrogates ("surrogateescape"), so a row
# in another encoding is stored with its bytes as they came, and rejected, naming its column.
_ERRORS = "surrogateescape"


_SURROGATE = re.compile("[\udc80-\udcff]")


def _undecodable(text: str) -> bool:
    return _SURROGATE.search(text) is not None


_FIELD_LIMIT_LOCK = threading.Lock()


def _allow_cells(chars: int) -> None:
    """Let csv.reader read cells of `chars` characters. Its limit is one for the whole
    process: raise it, never lower it, as another reader in the process may need more."""
    with _FIELD_LIMIT_LOCK:
        if csv.field_size_limit() < chars:
            csv.field_size_limit(chars)


def _keeping(lines: Iterable[str], record: list[str]) -> Iterator[str]:
    """`lines`, as csv.reader takes them, each also added to `record` (which the reader's
    caller empties at each new record): when csv.reader refuses a record, `_read_record`
    reads it again from there."""
    for line in lines:
        record.append(line)
        yield line


_START, _FIELD, _QUOTED, _QUOTE = range(4)
_NEWLINE = "\r\n"
_PLAIN = re.compile("[^,\r\n]+")


class _Record:
    """One record of the excel dialect, read as csv.reader reads it but without its field
    limit: only for the records csv.reader refuses. What matters is that the record ends
    where csv.reader would end it, so that the next one starts right."""

    def __init__(self) -> None:
        self.fields: list[str] = []
        self.cell: list[str] = []
        self.state = _START
        self.blank = False

    def read(self, text: str, at: int = 0) -> int | None:
        """Read `text` from `at` on: where the record ends (after its line end, or at the end
        of `text`), or None when a quoted field is still open at the end of `text`."""
        cell = self.cell
        while at < len(text):
            if self.state == _QUOTED:  # up to the next quote, at once: the cell may be huge
                end = text.find('"', at)
                if end < 0:
                    cell.append(text[at:])
                    return None
                cell.append(text[at:end])
                self.state, at = _QUOTE, end + 1
                continue
            c = text[at]
            if c == '"' and self.state in (_START, _QUOTE):
                if self.state == _QUOTE:
                    cell.append(c)  # a doubled quote
                self.state, at = _QUOTED, at + 1
            elif c == ",":
                self.fields.append("".join(cell))
                cell = self.cell = []
                self.state, at = _START, at + 1
            elif c in _NEWLINE:
                self.blank = self.state == _START and not self.fields  # a blank line
                return at + 2 if text.startswith("\r\n", at) else at + 1
            else:  # text outside quotes, up to the next comma or line end
                end = _PLAIN.match(text, at).end()  # type: ignore[union-attr]
                cell.append(text[at:end])
                self.state, at = _FIELD, end
        return None if self.state == _QUOTED else at

    def row(self) -> list[str]:
        return [] if self.blank else [*self.fields, "".join(self.cell)]


def _read_record(lines: Iterable[str]) -> list[str]:
    """The record that starts at the first of `lines`, taking as many as it spans."""
    record = _Record()
    for line in lines:
        if record.read(line) is not None:
            break
    return record.row()


def _read_all(text: str) -> list[list[str]]:
    rows, at = [], 0
    while at < len(text):
        record = _Record()
        end = record.read(text, at)
        rows.append(record.row())
        if end is None:  # the data ends in an open quoted field: it ends there (not strict)
            break
        at = end
    return rows


def _line(row: list[str]) -> str:
    out = io.StringIO()
    # The writer quotes a cell holding LF but not one holding a lone CR, which a reader takes
    # for a line end: such a row is written with every cell quoted (other rows keep their
    # bytes, and so their external ids).
    if any("\r" in cell for cell in row):
        csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(row)
    else:
        csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerow(row)
    return out.getvalue()


class CsvAdapter:
    name = "csv"
    field_label = "column"
    content_types: tuple[str, ...] = ("text/csv", "application/csv")
    mappings_dir: Path | None = None

    def __init__(self, max_cell_chars: int | None = None) -> None:
        self.max_cell_chars = max_cell_chars or get_settings().csv_max_cell_chars
        _allow_cells(self.max_cell_chars)

    def split(self, stream: IO[bytes], origin: str, mapping: str) -> Iterator[Unit]:
        # newline="": lines end at \r, \n or \r\n only, as csv.reader needs them (in time
        # linear in the line's length, a whole file on one line included).
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors=_ERRORS, newline="")
        try:
            yield from self._split(text, origin, mapping)
        finally:
            text.detach()  # the stream is the caller's: leave it open

    def _split(self, text: Iterator[str], origin: str, mapping: str) -> Iterator[Unit]:
        record: list[str] = []
        lines = _keeping(text, record)
        reader = csv.reader(lines)
        by_hand = 0  # lines read by `_read_record`, which reader.line_num does not count
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise MappingError(f"{origin} line 1: the header line cannot be read: {e}") from None
        if any(len(name) > self.max_cell_chars for name in header):
            raise MappingError(
                f"{origin} line 1: the header line has a column name over "
                f"{self.max_cell_chars} characters (HUB_CSV_MAX_CELL_CHARS)"
            )
        header_line = _line(header)
        while True:
            start = reader.line_num + by_hand + 1
            del record[:]
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                # A cell over csv's field limit: read the row by hand, so that it is stored
                # (and rejected, naming the column) and the next one starts where it should.
                read = len(record)
                row = _read_record(chain(record[:], lines))
                by_hand += len(record) - read
            if not any(cell.strip() for cell in row):
                continue
            raw = (header_line + _line(row)).encode("utf-8", _ERRORS)
            digest = hashlib.sha256(raw).hexdigest()[:40]
            yield Unit(raw=raw, external_id=f"{mapping}:{digest}", origin=f"{origin} line {start}")

    def parse(self, raw: bytes) -> Mapping[str, str]:
        text = raw.decode("utf-8", _ERRORS)
        try:
            rows = list(csv.reader(io.StringIO(text)))
        except csv.Error:  # a cell over csv's field limit: read by hand, to name its column
            rows = _read_all(text)
        if len(rows) != 2:
            raise MappingError("a CSV unit holds a header line and one row")
        header, row = rows
        if len(row) != len(header):
            raise MappingError(
                f"the row has {len(row)} columns where the header has {len(header)}",
                header[len(row)] if len(row) < len(header) else None,  # the first one missing
            )
        record = dict(zip(header, row, strict=True))
        if _undecodable(text):  # then find where: the header, or which column
            if any(_undecodable(name) for name in header):
                raise MappingError("the header line is not UTF-8 text")
            for name, value in record.items():
                if _undecodable(value):
                    raise MappingError("the value is not UTF-8 text", name)
        for name, value in record.items():
            if len(value) > self.max_cell_chars:
                raise MappingError(
                    f"the value is {len(value)} characters long, over the limit of "
                    f"{self.max_cell_chars} (HUB_CSV_MAX_CELL_CHARS)",
                    name,
                )
        return record

    def map(self, record: Mapping[str, str], mapper: Mapper) -> Mapped:
        return mapper.map(record)
