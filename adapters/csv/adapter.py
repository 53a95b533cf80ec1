"""CSV files: each row is one unit, stored with the header so it parses on its own.

Files stream in constant memory: rows are read one at a time. A unit's raw
bytes are the header line and the row, as CSV; its external id is the
mapping name and a digest of those bytes, so an identical resend is a
duplicate while a corrected row is a new message (that updates the same
resources, whose ids come from the mapping's key columns).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from hub.ingest.adapters import Unit
from hub.ingest.mapping import Mapped, Mapper, MappingError

# Bytes that are not UTF-8 are carried as lone surrogates ("surrogateescape"), so a row
# in another encoding is stored with its bytes as they came, and rejected, naming its column.
_ERRORS = "surrogateescape"


_SURROGATE = re.compile("[\udc80-\udcff]")


def _undecodable(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue()


class CsvAdapter:
    name = "csv"
    field_label = "column"
    content_types: tuple[str, ...] = ("text/csv", "application/csv")
    mappings_dir: Path | None = None

    def split(self, stream: IO[bytes], origin: str, mapping: str) -> Iterator[Unit]:
        text = codecs.getreader("utf-8-sig")(stream, errors=_ERRORS)
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        header_line = _line(header)
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            raw = (header_line + _line(row)).encode("utf-8", _ERRORS)
            digest = hashlib.sha256(raw).hexdigest()[:40]
            yield Unit(raw=raw, external_id=f"{mapping}:{digest}", origin=f"{origin} line {start}")

    def parse(self, raw: bytes) -> Mapping[str, str]:
        text = raw.decode("utf-8", _ERRORS)
        rows = list(csv.reader(io.StringIO(text)))
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
        return record

    def map(self, record: Mapping[str, str], mapper: Mapper) -> Mapped:
        return mapper.map(record)
