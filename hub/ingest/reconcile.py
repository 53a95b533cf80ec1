"""Reconcile: a message's plan, given what is stored now, becomes the plan to write.

Two rules are in force (docs/ingestion.md, "Prepare, reconcile, commit"):

- stored content a message does not own is kept: a write marked `overlay` puts its
  elements over the stored resource, and the elements a write `keep`s stay as stored
  (a list keeps its items and gains the write's, a single value stays when the write
  has none). The Patient a merge retires keeps its name and identifiers; a survivor
  keeps the `link`s of earlier merges when the next ADT rewrites it.
- a merge (`Merge`: HL7 v2 A40, A34, A47) moves the references to the merged resource
  to the survivor: each live resource that references it (the store's
  `outbound_reference` rows) becomes an `Update` of this plan, its content as stored
  with those references rewritten, guarded by its current version. History keeps the
  earlier versions; nothing is deleted. Resent, the merge finds nothing left to move
  and its other writes equal to what is stored, so it makes no version.

- a message about a retired Patient (one a merge linked `replaced-by` another), arriving
  after the merge, is redirected: its other writes reference the survivor (followed along
  a chain of merges), so a late result or visit lands with the rest of the record. The
  retired Patient's own write keeps it retired (`keep: [link, active]`).

Patient matching, survivorship between sources and conflict detection belong here too
and are not in force yet.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from hub.errors import Invalid
from hub.ingest.plan import Merge, MessagePlan, State, Write

# Resources that record what happened (to a version): their references are not moved.
RECORDS = frozenset({"Provenance", "AuditEvent"})
# More referrers than this and the merge is refused rather than half done.
MOST_MOVED = 10_000


def reconcile(plan: MessagePlan, state: State) -> MessagePlan:
    """The plan to write, given what is stored now (`state`, read-only)."""
    if not plan.merges and not any(w.overlay or w.keep for w in plan.writes):
        return plan
    writes = _redirected([_settled(w, state) for w in plan.writes], state)
    if not plan.merges and all(a is b for a, b in zip(writes, plan.writes, strict=True)):
        return plan
    planned = {w.key for w in writes}
    for merge in plan.merges:
        for moved in _moved(merge, state, planned):
            planned.add(moved.key)
            writes.append(moved)
    return replace(plan, writes=tuple(writes))


def _settled(write: Write, state: State) -> Write:
    """A write with the stored content it does not own: overlaid and kept elements."""
    if not write.overlay and not write.keep:
        return write
    stored = state.current(*write.key)
    if stored is None:
        return write
    mapped = write.resource
    content = {**stored, **mapped} if write.overlay else dict(mapped)
    for name in write.keep:
        old, new = stored.get(name), mapped.get(name)
        if isinstance(old, list):
            content[name] = old + [item for item in (new or []) if item not in old]
        elif old is not None and new is None:
            content[name] = old
    if content == mapped:
        return write  # nothing stored to keep (mostly): its references are walked already
    # Read, then written: guarded when the write builds on the stored content.
    guard = state.version(*write.key) if write.overlay else None
    return replace(write, resource=content, if_match=guard)


# Merges followed from a retired Patient to its survivor, at most (a loop is not followed).
MOST_HOPS = 8


def _survivor(resource_type: str, resource_id: str, state: State) -> str | None:
    """The live resource a retired one was merged into (`link` replaced-by, followed along
    a chain of merges), or None when it is not retired."""
    reference, seen = f"{resource_type}/{resource_id}", set()
    for _ in range(MOST_HOPS):
        seen.add(reference)
        stored = state.current(*reference.split("/", 1)) if "/" in reference else None
        if stored is None or stored.get("active", True) is not False:
            break
        nexts = [
            link["other"].get("reference")
            for link in stored.get("link", [])
            if link.get("type") == "replaced-by" and isinstance(link.get("other"), dict)
        ]
        if not nexts or not nexts[0] or nexts[0] in seen:
            break
        reference = nexts[0]
    return reference if reference != f"{resource_type}/{resource_id}" else None


def _redirected(writes: list[Write], state: State) -> list[Write]:
    """The writes of a message about a retired Patient, referencing its survivor instead."""
    retired = {
        f"Patient/{w.key[1]}": survivor
        for w in writes
        if w.key[0] == "Patient" and w.keep
        for survivor in [_survivor("Patient", w.key[1], state)]
        if survivor is not None
    }
    if not retired:
        return writes
    out = []
    for w in writes:
        if w.key[0] == "Patient" or w.key[0] in RECORDS:
            out.append(w)
            continue
        content = copy.deepcopy(w.resource)
        paths = [
            path for old, new in retired.items() for path in _rewrite(content, w.key[0], old, new)
        ]
        out.append(replace(w, resource=content) if paths else w)
    return out


def _moved(merge: Merge, state: State, planned: set[tuple[str, str]]) -> list[Write]:
    """Updates of the live resources referencing the merged one, referencing the survivor."""
    found = state.referrers(merge.resource_type, merge.merged)
    if len(found) > MOST_MOVED:
        raise Invalid(
            f"{merge.resource_type}/{merge.merged} is referenced by more than "
            f"{MOST_MOVED} resources: merge them in steps"
        )
    old = f"{merge.resource_type}/{merge.merged}"
    new = f"{merge.resource_type}/{merge.survivor}"
    writes = []
    for key in found:
        if key in planned or key[0] in RECORDS:
            continue
        stored = state.current(*key)
        version = state.version(*key)
        if stored is None or version is None:
            continue
        content = copy.deepcopy(stored)
        paths = _rewrite(content, key[0], old, new)
        if not paths:
            continue  # only a version reference, or a Patient.link: history, kept
        lineage = tuple((path, merge.source_field) for path in paths)
        writes.append(Write(content, lineage, if_match=version))
    return writes


def _rewrite(value: Any, path: str, old: str, new: str) -> list[str]:
    """Rewrite the references `old` in a resource to `new`; the element paths rewritten.
    A Patient's `link` is left as it is: it records which identity replaced which."""
    done: list[str] = []
    if isinstance(value, dict):
        if value.get("reference") == old:
            value["reference"] = new
            done.append(path)
        for name, item in value.items():
            if name == "link" and path == "Patient":
                continue
            if isinstance(item, dict | list):
                done += _rewrite(item, f"{path}.{name}", old, new)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            done += _rewrite(item, f"{path}[{index}]", old, new)
    return done
