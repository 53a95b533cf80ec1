"""MLLP framing (HL7 v2 chapter 2, appendix C: the Minimal Lower Layer Protocol).

A frame is `<VT> message <FS><CR>` (0x0b, then 0x1c 0x0d). TCP keeps no message
boundaries: one read may hold the end of a frame, two more frames and the start of a
fourth, so `Deframer` is incremental. Bytes outside a frame (before its start block)
are counted and dropped; a frame longer than `max_frame` is dropped whole (never kept
in memory past the limit) and the deframer looks for the next start block. A start block
inside a frame means the frame before it never ended: its bytes are dropped as junk.

`split_stream` reads a file of one or many messages, framed or not (or both), whose
segments end with `\\r`, `\\n` or `\\r\\n`, and yields each message with its segments
ended by `\\r`, as HL7 v2 writes them on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

START = b"\x0b"
END = b"\x1c\r"


def frame(message: bytes) -> bytes:
    return START + message + END


@dataclass
class Frames:
    """What one `Deframer.feed` found: complete messages, and what it dropped."""

    messages: list[bytes] = field(default_factory=list)
    junk: int = 0  # bytes outside any frame (or of a frame that never ended), dropped
    oversized: int = 0  # frames longer than the maximum, dropped


class Deframer:
    """Feed it what each read gives; it answers the frames completed so far."""

    def __init__(self, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self._skipping = False  # in a frame over the maximum: dropped up to its end block

    @property
    def partial(self) -> int:
        """Bytes of a frame begun and not ended (what a sender that stops mid-frame left)."""
        return len(self._buf) if self._in_frame else 0

    def feed(self, data: bytes) -> Frames:
        out = Frames()
        buf = self._buf
        buf += data
        at = 0
        while at < len(buf):
            if not self._in_frame:
                start = buf.find(START, at)
                if start < 0:
                    out.junk += len(buf) - at
                    at = len(buf)
                    break
                out.junk += start - at
                at = start + 1
                self._in_frame, self._skipping = True, False
                continue
            end = buf.find(END, at)
            restart = buf.find(START, at, end if end >= 0 else len(buf))
            if restart >= 0:  # a new frame starts before this one ended
                if not self._skipping:
                    out.junk += restart - at + 1
                self._in_frame, self._skipping, at = False, False, restart
                continue
            if end < 0:
                # Keep the last byte: it may be the FS of an end block split across reads.
                if not self._skipping and len(buf) - at > self.max_frame:
                    out.oversized += 1
                    self._skipping = True
                if self._skipping:
                    at = max(at, len(buf) - 1)
                break
            if self._skipping:
                pass
            elif end - at > self.max_frame:
                out.oversized += 1
            else:
                out.messages.append(bytes(buf[at:end]))
            self._in_frame, self._skipping = False, False
            at = end + len(END)
        del buf[:at]
        return out


_TOKEN = re.compile(rb"\r\n|\n|\r|\x1c|\x0b")
_BOM = b"\xef\xbb\xbf"


def normalise(message: bytes) -> bytes:
    """Segments ended by `\\r` alone, blank lines left out, the last segment ended too."""
    return b"".join(s + b"\r" for s in re.split(rb"\r\n|\n|\r", message) if s.strip())


def split_stream(stream: IO[bytes], chunk: int = 1 << 16) -> Iterator[bytes]:
    """Each message of a file, its segments ended by `\\r`.

    A message starts at an MLLP start block or at a segment beginning `MSH` (so framed,
    unframed and mixed files all split), and ends before the next one; blank lines and
    end blocks are left out. Reads `chunk` bytes at a time: constant memory per message.
    """
    segments: list[bytes] = []
    rest = b""
    first = True
    while True:
        data = stream.read(max(chunk, len(_BOM)) if first else chunk)
        text = rest + data
        if first and text.startswith(_BOM):
            text = text[len(_BOM) :]
        first = False
        pieces = _TOKEN.split(text)
        breaks = [m.group() for m in _TOKEN.finditer(text)]
        # The last piece may go on in the next read; a `\r\n` split across two reads
        # gives a blank segment, left out like any blank line.
        rest = pieces.pop() if data else b""
        if not data:
            breaks.append(b"")
        for piece, brk in zip(pieces, breaks, strict=True):
            if piece.strip(b" \t\x1a"):
                if piece.startswith(b"MSH") and segments:
                    yield _joined(segments)
                    segments = []
                segments.append(piece)
            if brk == START and segments:
                yield _joined(segments)
                segments = []
        if not data:
            if segments:
                yield _joined(segments)
            return


def _joined(segments: list[bytes]) -> bytes:
    return b"".join(s + b"\r" for s in segments)
