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

Enhanced mode's application acknowledgement (MSH-16 AL, ER or SU): `application_ack`
waits until the message is processed (its status `done`, `failed` or `dead`, polled
from the store for every message waited on at once) and answers the ACK to send back
(AA, AE or AR, with the processing error) on the connection the message came on.
ACK messages a sender sends back for those are neither stored nor answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.hl7v2 import ack, receipt
from adapters.hl7v2.ack import ACCEPT, ERROR, REJECT, ErrorDetail, Severity
from adapters.hl7v2.header import APPLICATION_INTERNAL_ERROR, Header
from hub.ingest.messages import DEAD, DONE, FAILED
from hub.ingest.receiver import GroupCommit, Received, StoreUnavailable
from hub.ingest.service import IngestService
from hub.settings import Settings

ADAPTER = "hl7v2"
CONTENT_TYPE = "application/hl7-v2"
DUPLICATE_KEY = "205"
FINISHED = (DONE, FAILED, DEAD)

log = logging.getLogger("hub.hl7v2")


@dataclass(frozen=True)
class Answer:
    """One message's outcome at receipt: the ACK to send (None: none was asked for),
    its MSA-1 code, and the stored message's id (None when nothing could be stored)."""

    ack: bytes | None
    code: str
    message_id: int | None = None
    duplicate: bool = False
    unavailable: bool = False  # the store could not commit it: the sender must send again
    header: Header | None = None
    outcome: str = ACCEPT  # at receipt: accept, error or reject

    @property
    def wants_application_ack(self) -> bool:
        """Whether MSH-16 may ask for an application ACK of this message (AL, ER, SU): one
        accepted (CA) and stored; one refused at receipt was answered CE or CR, and is not
        processed."""
        h = self.header
        return (
            h is not None
            and self.outcome == ACCEPT
            and not self.unavailable
            and h.enhanced
            and h.application_ack.upper() in ("AL", "ER", "SU")
            and self.message_id is not None
        )


class Receiver:
    def __init__(
        self,
        commits: GroupCommit,
        adapter: receipt.Accepting,
        *,
        application_ack_seconds: float = 3600.0,
        poll_seconds: float = 0.25,
    ) -> None:
        self.commits = commits
        self.adapter = adapter
        self.application_ack_seconds = application_ack_seconds
        self.poll_seconds = poll_seconds
        self._watched: dict[int, list[asyncio.Future[tuple[str, str | None]]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def receive(
        self, raws: Sequence[bytes], origin: str | None, *, always: bool = False
    ) -> list[Answer]:
        """Check, commit and acknowledge `raws` (in order); answered once committed.
        `always`: an ACK even where MSH-15 asks for none (an HTTP answer has a body)."""
        verdicts = [receipt.check(raw, self.adapter) for raw in raws]
        # A sender's ACK of an application ACK of ours: nothing to store nor to answer.
        theirs = [v.header is not None and v.header.message_type == "ACK" for v in verdicts]
        if any(theirs):
            kept = [i for i, t in enumerate(theirs) if not t]
            answers = iter(
                await self.receive([raws[i] for i in kept], origin, always=always) if kept else []
            )
            return [Answer(None, "") if t else next(answers) for t in theirs]
        units = [receipt.unit(raw, v, origin) for raw, v in zip(raws, verdicts, strict=True)]
        # The header read at receipt serves the order key too: the MSH is read once.
        keys = [
            self.adapter.order_key(u.raw, u.source or "", v.header) if u.error is None else None
            for u, v in zip(units, verdicts, strict=True)
        ]
        try:
            stored: Sequence[Received] = await self.commits.submit(units, keys)
        except StoreUnavailable as e:
            failed = ErrorDetail(APPLICATION_INTERNAL_ERROR, f"{e.message}; send it again")
            return [
                _answer(raw, receipt.Verdict(REJECT, v.header, (failed,)), None, always)
                for raw, v in zip(raws, verdicts, strict=True)
            ]
        return [
            _answer(raw, v, r, always) for raw, v, r in zip(raws, verdicts, stored, strict=True)
        ]

    async def application_ack(self, answer: Answer) -> bytes | None:
        """The application ACK of a message, once it is processed, as MSH-16 asks; None
        when it asks for none, or the message is not finished within
        `application_ack_seconds` (its outcome stays in its status)."""
        header = answer.header
        if not answer.wants_application_ack or header is None or answer.message_id is None:
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[str, str | None]] = loop.create_future()
        self._watched.setdefault(answer.message_id, []).append(waiter)
        if self._poller is None or self._poller.done() or self._poller.get_loop() is not loop:
            self._poller = loop.create_task(self._poll(), name="hl7v2-application-acks")
        try:
            status, error = await asyncio.wait_for(waiter, self.application_ack_seconds)
        except TimeoutError:
            log.info("message %s not finished in time for its application ACK", answer.message_id)
            return None
        finally:
            waiting = self._watched.get(answer.message_id, [])
            if waiter in waiting:
                waiting.remove(waiter)
            if not waiting:
                self._watched.pop(answer.message_id, None)
        outcome = (
            ACCEPT if status == DONE else answer.outcome if answer.outcome != ACCEPT else ERROR
        )
        if not ack.wanted_application(header, outcome):
            return None
        errors = (
            () if outcome == ACCEPT else (ErrorDetail(APPLICATION_INTERNAL_ERROR, error or status),)
        )
        text = None if outcome == ACCEPT else error or status
        return ack.build(header, outcome, errors, text=text, application=True)

    async def _poll(self) -> None:
        """Look up the statuses of every message waited on, one query a round."""
        loop = asyncio.get_running_loop()
        while self._watched:
            await asyncio.sleep(self.poll_seconds)
            ids = list(self._watched)
            try:
                rows = await loop.run_in_executor(None, self.commits.store.results, ids)
            except Exception as e:  # the store is away: look again next round
                log.warning("looking up %s messages' statuses failed: %s", len(ids), e)
                continue
            for message_id, status, _, error, _ in rows:
                if status in FINISHED:
                    for waiter in self._watched.pop(message_id, []):
                        if not waiter.done():
                            waiter.set_result((status, error))

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self.commits.close()


def build_receiver(service: IngestService, settings: Settings) -> Receiver:
    """The receiver over an ingestion service: its store, dispatcher and hl7v2 adapter
    (`LookupError` when HUB_ADAPTERS leaves it out)."""
    adapter = service.adapters.get(ADAPTER)
    if not callable(getattr(adapter, "accepts", None)):
        raise TypeError(f"the {ADAPTER} adapter has no accepts(header) method")
    commits = GroupCommit(
        service.store,
        service.dispatcher,
        adapter=ADAPTER,
        content_type=CONTENT_TYPE,
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
        return Answer(built, "AR", message_id, duplicate, unavailable, None, REJECT)
    code = ack.code_for(header, verdict.outcome)
    if not always and not ack.wanted(header, verdict.outcome):
        return Answer(None, code, message_id, duplicate, unavailable, header, verdict.outcome)
    text = None if verdict.outcome == ACCEPT else "; ".join(e.text for e in errors)
    built = ack.build(header, verdict.outcome, errors, text=text)
    return Answer(built, code, message_id, duplicate, unavailable, header, verdict.outcome)
