"""Loading SearchParameter definitions into the store (`hub definitions load FILE`).

Each SearchParameter of a Bundle (or a single SearchParameter) is validated
and stored through the normal write path, under an id that depends only on
the definition: the id of the stored SearchParameter with the same url, else
its own id (unless another url holds it), else one derived from its url. So
loading a file twice changes nothing the second time. The report accounts
for every definition: indexed (the registry took at least one of its bases)
or unsupported, with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hub.errors import HubError
from hub.fhir import ID_PATTERN, validate
from hub.interactions.context import Context
from hub.interactions.executor import execute
from hub.interactions.plan import Plan, Update
from hub.search import stored
from hub.search.registry import Unsupported, from_resources


@dataclass(frozen=True)
class Refusal:
    code: str
    base: tuple[str, ...]
    reason: str
    url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "base": list(self.base), "reason": self.reason, "url": self.url}


@dataclass
class LoadReport:
    definitions: int = 0
    indexed: int = 0
    unsupported: list[Refusal] = field(default_factory=list)
    # Bases the registry refused of definitions it took for other bases.
    refused_bases: list[Refusal] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    pending: int = 0  # stored parameters that await a reindex after the load

    def to_json(self) -> dict[str, Any]:
        return {
            "definitions": self.definitions,
            "indexed": self.indexed,
            "unsupported": [u.to_json() for u in self.unsupported],
            "refusedBases": [u.to_json() for u in self.refused_bases],
            "stored": {
                "created": self.created,
                "updated": self.updated,
                "unchanged": self.unchanged,
            },
            "pendingReindex": self.pending,
        }

    def lines(self) -> list[str]:
        out = [
            f"{self.definitions} definitions: {self.indexed} indexed, "
            f"{len(self.unsupported)} unsupported",
            f"stored: {self.created} created, {self.updated} updated, {self.unchanged} unchanged",
            f"awaiting a reindex (`hub reindex`): {self.pending} stored parameters",
        ]
        if self.unsupported:
            out.append("unsupported:")
            out += [f"  {_where(u)}: {u.reason}" for u in self.unsupported]
        if self.refused_bases:
            out.append("indexed, but not on every base:")
            out += [f"  {_where(u)}: {u.reason}" for u in self.refused_bases]
        return out


def _where(u: Refusal) -> str:
    return f"{u.code} on {', '.join(u.base) or '?'}" + (f" ({u.url})" if u.url else "")


def _refusal(resource: Mapping[str, Any], reason: str) -> Refusal:
    url = resource.get("url")
    return Refusal(
        str(resource.get("code") or "?"),
        tuple(str(b) for b in resource.get("base") or ()),
        reason,
        url if isinstance(url, str) else None,
    )


def _resource_id(resource: Mapping[str, Any], by_url: dict[str, str], urls: dict[str, Any]) -> str:
    url = str(resource["url"])
    if url in by_url:
        return by_url[url]
    own = resource.get("id")
    if isinstance(own, str) and ID_PATTERN.match(own) and urls.get(own, url) == url:
        return own
    return str(uuid.uuid5(uuid.NAMESPACE_URL, url))


def load_definitions(ctx: Context, definitions: Sequence[Mapping[str, Any]]) -> LoadReport:
    """Store the SearchParameters (one transaction) and report what the registry makes of them."""
    report = LoadReport(definitions=len(definitions))
    valid: list[dict[str, Any]] = []
    for resource in definitions:
        try:
            validate(
                dict(resource),
                expected_type=stored.RESOURCE_TYPE,
                max_depth=ctx.settings.max_resource_depth,
            )
        except HubError as e:
            report.unsupported.append(_refusal(resource, f"not a valid SearchParameter: {e}"))
            continue
        if not isinstance(resource.get("url"), str) or not resource["url"]:
            report.unsupported.append(_refusal(resource, "the definition has no url"))
            continue
        valid.append(dict(resource))
    params, refused = from_resources(valid, ctx.registries.params)
    accepted = {p.url for p in params}
    by_definition: dict[str | None, list[Unsupported]] = {}
    for u in refused:
        by_definition.setdefault(u.url, []).append(u)
    for resource in valid:
        url = resource.get("url")
        mine = by_definition.get(url, [])
        if resource.get("status") == "retired":
            report.unsupported.append(_refusal(resource, "the definition is retired"))
        elif url in accepted:
            report.indexed += 1
            report.refused_bases += [Refusal(u.code, u.base, u.reason, u.url) for u in mine]
        else:
            reasons = "; ".join(dict.fromkeys(u.reason for u in mine)) or "not indexed"
            report.unsupported.append(_refusal(resource, reasons))
    with ctx.unit(None) as tx:
        urls = stored.stored_urls(tx)
        by_url: dict[str, str] = {}
        for rid, url in sorted(urls.items()):
            if url:
                by_url.setdefault(url, rid)
        for resource in valid:
            rid = _resource_id(resource, by_url, urls)
            before = tx.current(stored.RESOURCE_TYPE, rid)
            [result] = execute(ctx, tx, Plan.of(Update(stored.RESOURCE_TYPE, rid, resource)))
            if before is None or before.deleted:
                report.created += 1
            elif result.version is not None and result.version.version_id != before.version_id:
                report.updated += 1
            else:
                report.unchanged += 1
            by_url[str(resource["url"])] = rid
            urls[rid] = resource["url"]
    report.pending = len(ctx.registries.refresh().pending)
    return report
