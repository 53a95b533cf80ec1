"""Reindex jobs: put the values of newly stored search parameters into the index.

A SearchParameter written to the store is `pending` (see `hub.parameters.stored`):
writes index it from then on, but the resources stored before know nothing
of it, so searches refuse it. A job re-extracts the index rows of every
current resource of the affected types (those of the pending parameters, or
the types asked for), in batches, recording its progress in `reindex_jobs`,
and then marks the parameters it covered `indexed`.

Nothing written meanwhile is missed: each batch locks the rows it rewrites
(writers of those resources wait, then index with the pending parameters
too), and a last pass re-extracts whatever changed since the job started,
after waiting until every process has seen the new parameters (processes
look at most every `settle_seconds`).

`hub reindex` runs a job in the foreground; `POST [base]/$reindex` runs one in
a background thread (`hub.interactions.reindex`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from hub.errors import Invalid
from hub.fhir import R4_RESOURCE_TYPES
from hub.parameters.stored import Pending, Registries, build, mark_indexed, read_version, utc
from hub.search.extract import extract
from hub.search.registry import SearchParam
from hub.store.repository import IndexRows, Repository
from hub.store.search.jobs import count_live, insert_job, lock_batch, read_job, update_job

Progress = Callable[[int, int], None]  # (done, total)

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
# Writers stamp lastUpdated with their own clock: the last pass looks a little further back.
_CLOCK_MARGIN = timedelta(seconds=2)


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    resource_types: tuple[str, ...]
    total: int
    done: int
    started: datetime
    finished: datetime | None = None
    error: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def check_types(types: Iterable[str]) -> list[str]:
    wanted = sorted({t.strip() for t in types if t.strip()})
    unknown = [t for t in wanted if t not in R4_RESOURCE_TYPES]
    if unknown:
        raise Invalid(f"Unknown resource type(s) to reindex: {', '.join(unknown)}")
    return wanted


def start(repo: Repository, types: Iterable[str] = ()) -> str:
    """Record a queued job; without types it covers those of the parameters pending then."""
    wanted = check_types(types)
    job_id = uuid.uuid4().hex
    with repo.transaction() as tx:
        insert_job(
            tx,
            id=job_id,
            status=QUEUED,
            resource_types=" ".join(wanted),
            total=0,
            done=0,
            started=_now(),
        )
    return job_id


def status(repo: Repository, job_id: str) -> Job | None:
    with repo.snapshot() as tx:
        row = read_job(tx, job_id)
    if row is None:
        return None
    return Job(
        id=row.id,
        status=row.status,
        resource_types=tuple(row.resource_types.split()),
        total=row.total,
        done=row.done,
        started=utc(row.started),
        finished=utc(row.finished) if row.finished is not None else None,
        error=row.error,
    )


def reindex(
    repo: Repository,
    shipped: Sequence[SearchParam],
    types: Iterable[str] = (),
    *,
    batch: int = 500,
    settle_seconds: float = 0.0,
    progress: Progress | None = None,
) -> Job:
    """Start a job and run it to its end in this thread."""
    job_id = start(repo, types)
    return run(repo, shipped, job_id, batch=batch, settle_seconds=settle_seconds, progress=progress)


def run(
    repo: Repository,
    shipped: Sequence[SearchParam],
    job_id: str,
    *,
    batch: int = 500,
    settle_seconds: float = 0.0,
    progress: Progress | None = None,
) -> Job:
    """Run a queued job; a failure is recorded on the job and raised again."""
    try:
        _Run(repo, shipped, job_id, max(1, batch), progress).run(settle_seconds)
    except Exception as e:
        _update(repo, job_id, status=FAILED, finished=_now(), error=f"{type(e).__name__}: {e}")
        raise
    found = status(repo, job_id)
    assert found is not None
    return found


def _update(repo: Repository, job_id: str, **values: Any) -> None:
    with repo.transaction() as tx:
        update_job(tx, job_id, **values)


class _Run:
    def __init__(
        self,
        repo: Repository,
        shipped: Sequence[SearchParam],
        job_id: str,
        batch: int,
        progress: Progress | None,
    ) -> None:
        self.repo = repo
        self.shipped = shipped
        self.job_id = job_id
        self.batch = batch
        self.progress = progress
        self.registries: Registries = build(repo, shipped)
        self.done = 0
        self.total = 0

    def run(self, settle_seconds: float) -> None:
        job = status(self.repo, self.job_id)
        if job is None:
            raise LookupError(f"no reindex job {self.job_id}")
        asked = frozenset(job.resource_types)
        covered: list[Pending]
        if asked:
            types = sorted(asked)
            covered = [p for p in self.registries.pending if p.types <= asked]
        else:
            covered = list(self.registries.pending)
            types = sorted(set().union(*(p.types for p in covered)))
        started = _now()
        with self.repo.transaction() as tx:
            self.total = count_live(tx, types)
            update_job(
                tx,
                self.job_id,
                status=RUNNING,
                resource_types=" ".join(types),
                total=self.total,
                started=started,
            )
        self._report()
        for resource_type in types:
            self._pass(resource_type, since=None)
        if covered:
            # Every process sees a new parameter within settle_seconds of its writing; until
            # then one may have indexed without it. Re-extract what changed since the start.
            settled = max(p.written for p in covered) + timedelta(seconds=settle_seconds)
            wait = (settled - _now()).total_seconds()
            if wait > 0:
                time.sleep(wait)
            for resource_type in types:
                self._pass(resource_type, since=started - _CLOCK_MARGIN)
        with self.repo.transaction() as tx:
            mark_indexed(tx, covered)
            update_job(
                tx,
                self.job_id,
                status=COMPLETED,
                done=self.done,
                total=self.total,
                finished=_now(),
            )

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _pass(self, resource_type: str, since: datetime | None) -> None:
        """Re-extract the resources of one type (those changed since `since` when given)."""
        last = ""
        while True:
            with self.repo.transaction() as tx:
                version = read_version(tx)
                if version != self.registries.version:  # a parameter changed meanwhile
                    self.registries = build(self.repo, self.shipped)
                # Locked: a writer of one of these waits, then indexes with what we know.
                rows = lock_batch(tx, resource_type, last, self.batch, since)
                if not rows:
                    return
                index: dict[str, IndexRows] = {
                    res_id: extract(self.registries.write, orjson.loads(content))
                    for res_id, content in rows
                }
                tx.replace_index(resource_type, index)
                if since is None:
                    self.done += len(rows)
                    self.total = max(self.total, self.done)
                    update_job(tx, self.job_id, done=self.done, total=self.total)
            last = rows[-1][0]
            if since is None:
                self._report()
