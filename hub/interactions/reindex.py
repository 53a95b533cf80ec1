"""$reindex: put newly stored search parameters into the index, in the background.

`POST [base]/$reindex` (optional `_type=Patient,Observation`, or a Parameters
body with `type` parameters) starts a job in a background thread and answers
202 Accepted with `Content-Location: [base]/$reindex/{job}`; `GET` on that
address answers a Parameters resource with the job's status, total, done,
started and finished. The job itself is `hub.parameters.reindex`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from hub.errors import Invalid, NotFound, information
from hub.interactions.context import Context, Request, Result
from hub.parameters import reindex as jobs
from hub.store.repository import Transaction

log = logging.getLogger(__name__)


def _types(req: Request) -> list[str]:
    found = [t for name, value in req.params if name in ("_type", "type") for t in value.split(",")]
    body = req.body
    if body is not None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise Invalid("$reindex takes a Parameters resource (or no body)")
        for p in body.get("parameter") or []:
            if isinstance(p, dict) and p.get("name") in ("type", "_type"):
                value = p.get("valueCode") or p.get("valueString") or ""
                found.extend(str(value).split(","))
    return jobs.check_types(found)


def _work(ctx: Context, job_id: str) -> None:
    try:
        jobs.run(
            ctx.repo,
            ctx.registries.params,
            job_id,
            settle_seconds=ctx.settings.registry_refresh_seconds,
        )
    except Exception:
        log.exception("reindex job %s failed", job_id)
    finally:
        ctx.registries.refresh()


def start(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    if tx is not None:
        raise Invalid("$reindex cannot run inside a batch or transaction")
    job_id = jobs.start(ctx.repo, _types(req))
    threading.Thread(
        target=_work, args=(ctx, job_id), name=f"reindex-{job_id}", daemon=True
    ).start()
    location = f"{req.base_url}/$reindex/{job_id}"
    return Result(
        202,
        body=information(f"Reindex job {job_id} started; its progress is at {location}"),
        headers={"Content-Location": location},
    )


def _instant(value: Any) -> str:
    return str(value.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def job_status(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    job_id = req.resource_id or next((v for k, v in req.params if k == "job"), None)
    if not job_id:
        raise Invalid("Name the reindex job: GET $reindex/{job} or $reindex?job={job}")
    job = jobs.status(ctx.repo, job_id)
    if job is None:
        raise NotFound(f"No reindex job '{job_id}'")
    params: list[dict[str, Any]] = [
        {"name": "job", "valueString": job.id},
        {"name": "status", "valueCode": job.status},
        {"name": "total", "valueInteger": job.total},
        {"name": "done", "valueInteger": job.done},
        {"name": "started", "valueInstant": _instant(job.started)},
    ]
    params += [{"name": "type", "valueCode": t} for t in job.resource_types]
    if job.finished is not None:
        params.append({"name": "finished", "valueInstant": _instant(job.finished)})
    if job.error:
        params.append({"name": "error", "valueString": job.error})
    return Result(200, body={"resourceType": "Parameters", "parameter": params})
