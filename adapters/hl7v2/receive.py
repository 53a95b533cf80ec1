"""Receiving HL7 v2 messages pushed by a sender (MLLP or HTTP): check, commit, ACK.

Both the MLLP listener and `POST /hl7v2` hand the messages they read to a `Receiver`,
which checks each at receipt (`receipt.check`), commits them all through the group
commit, and answers each one's ACK once it is durable:

- accepted and stored (or stored before: a resend): AA, or CA in enhanced mode;
- refused at receipt (stored all the same, `failed`): AE/CE or AR/CR with ERR segments;
- the store could not commit: AR/CR with ERR 207, nothing positive, so the sender
  sends again;
- the same control id came before with other bytes: stored, flagged, and AA/CA with a
  warning ERR (table 0357 code 205, duplicate key identifier).

`None` instead of an ACK when enhanced mode's MSH-15 asks for none (NE, or ER/SU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adapters.hl7v2 import ack, receipt
from adapters.hl7v2.ack import ACCEPT, REJECT, ErrorDetail, Severity
from adapters.hl7v2.header import APPLICATION_INTERNAL_ERROR
from hub.ingest.receiver import GroupCommit, Received, StoreUnavailable
from hub.ingest.service import IngestService
from hub.settings import Settings

ADAPTER = "hl7v2"
CONTENT_TYPE = "application/hl7-v2"
DUPLICATE_KEY = "205"


@dataclass(frozen=True)
class Answer:
    """One message's outcome at receipt: the ACK to send (None: none was asked for),
    its MSA-1 code, and the stored message's id (None when nothing could be stored)."""

    ack: bytes | None
    code: str
    message_id: int | None = None
    duplicate: bool = False
    unavailable: bool = False  # the store could not commit it: the sender must send again


class Receiver:
    def __init__(self, commits: GroupCommit, adapter: receipt.Accepting) -> None:
        self.commits = commits
        self.adapter = adapter

    async def receive(
        self, raws: Sequence[bytes], origin: str | None, *, always: bool = False
    ) -> list[Answer]:
        """Check, commit and acknowledge `raws` (in order); answered once committed.
        `always`: an ACK even where MSH-15 asks for none (an HTTP answer has a body)."""
        verdicts = [receipt.check(raw, self.adapter) for raw in raws]
        units = [receipt.unit(raw, v, origin) for raw, v in zip(raws, verdicts, strict=True)]
        try:
            stored: Sequence[Received] = await self.commits.submit(units)
        except StoreUnavailable as e:
            failed = ErrorDetail(APPLICATION_INTERNAL_ERROR, f"{e.message}; send it again")
            return [
                _answer(raw, receipt.Verdict(REJECT, v.header, (failed,)), None, always)
                for raw, v in zip(raws, verdicts, strict=True)
            ]
        return [
            _answer(raw, v, r, always) for raw, v, r in zip(raws, verdicts, stored, strict=True)
        ]

    async def close(self) -> None:
        await self.commits.close()


def build_receiver(service: IngestService, settings: Settings) -> Receiver:
    """The receiver over an ingestion service: its store, dispatcher and hl7v2 adapter
    (`LookupError` when HUB_ADAPTERS leaves it out)."""
    adapter = service.adapters.get(ADAPTER)
    if not callable(getattr(adapter, "accepts", None)):
        raise TypeError(f"the {ADAPTER} adapter has no accepts(header) method")
    pipeline = service.pipeline
    commits = GroupCommit(
        service.store,
        service.dispatcher,
        adapter=ADAPTER,
        content_type=CONTENT_TYPE,
        order_key=lambda raw, source: pipeline.order_key(ADAPTER, None, raw, source),
        window=settings.hl7v2_commit_window_seconds,
        max_group=settings.hl7v2_commit_group,
    )
    return Receiver(commits, adapter)  # type: ignore[arg-type]


def _answer(
    raw: bytes, verdict: receipt.Verdict, stored: Received | None, always: bool = False
) -> Answer:
    errors = verdict.errors
    if stored is not None and stored.conflicts_with is not None:
        errors = (
            *errors,
            ErrorDetail(
                DUPLICATE_KEY,
                f"MSH-10: control id received before with other content (message "
                f"{stored.conflicts_with}); stored as message {stored.id}, flagged",
                field=10,
                severity=Severity.WARNING,
            ),
        )
    header = verdict.header
    message_id = stored.id if stored is not None else None
    duplicate = stored is not None and not stored.new and stored.conflicts_with is None
    unavailable = stored is None
    if header is None:
        why = verdict.reason or "the message header cannot be read"
        built = ack.build_unreadable(raw, errors, why)
        return Answer(built, "AR", message_id, duplicate, unavailable)
    code = ack.code_for(header, verdict.outcome)
    if not always and not ack.wanted(header, verdict.outcome):
        return Answer(None, code, message_id, duplicate, unavailable)
    text = None if verdict.outcome == ACCEPT else "; ".join(e.text for e in errors)
    built = ack.build(header, verdict.outcome, errors, text=text)
    return Answer(built, code, message_id, duplicate, unavailable)
