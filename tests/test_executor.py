"""The write executor, without HTTP: each write kind, its rules, and referential integrity.

Runs on SQLite and PostgreSQL (the `ctx` fixture is parametrised by backend).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import orjson
import pytest

from hub.errors import (
    Conflict,
    Gone,
    HubError,
    Invalid,
    MultipleMatches,
    NotFound,
    PreconditionFailed,
)
from hub.fhir.references import local_references, local_target
from hub.interactions.context import Context, Result
from hub.interactions.executor import execute, unresolved
from hub.interactions.plan import (
    ConditionalCreate,
    ConditionalDelete,
    ConditionalUpdate,
    Create,
    Delete,
    MissingReference,
    Patch,
    Plan,
    Update,
    Write,
)

BASE = "http://hub.test/fhir"


def run(ctx: Context, *writes: Write) -> list[Result]:
    with ctx.unit(None) as tx:
        return execute(ctx, tx, Plan.of(*writes, base_url=BASE))


def missing(ctx: Context, *writes: Write) -> list[MissingReference]:
    with ctx.unit(None) as tx:
        return unresolved(ctx, tx, Plan.of(*writes, base_url=BASE))


def fails(ctx: Context, kind: type[HubError], *writes: Write) -> HubError:
    with pytest.raises(kind) as caught:
        run(ctx, *writes)
    return caught.value


def stored(result: Result) -> dict[str, Any]:
    assert result.version is not None and result.version.content is not None
    loaded: dict[str, Any] = orjson.loads(result.version.content)
    return loaded


def patient(pid: str | None = None, family: str = "Doe", uid: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}]}
    if uid:
        body["identifier"] = [{"system": "urn:test", "value": uid}]
    if pid is not None:
        body["id"] = pid
    return body


def observation(oid: str | None = None, **elements: Any) -> dict[str, Any]:
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "t"}, **elements}
    if oid is not None:
        body["id"] = oid
    return body


def ref(target: str) -> dict[str, str]:
    return {"reference": target}


def without_integrity(ctx: Context) -> Context:
    settings = ctx.settings.model_copy(update={"referential_integrity": False})
    return dataclasses.replace(ctx, settings=settings)


# -- write kinds -------------------------------------------------------------------------------


def test_create_assigns_an_id_and_leaves_the_body_as_it_was(ctx: Context) -> None:
    body = patient()
    before = copy.deepcopy(body)
    [result] = run(ctx, Create("Patient", body))
    assert result.status == 201 and result.location
    assert result.version is not None and result.version.version_id == 1
    assert stored(result)["id"] == result.version.resource_id
    assert stored(result)["meta"]["versionId"] == "1"
    assert body == before  # the executor stamps a copy


def test_create_with_an_id_assigned_up_front(ctx: Context, uid: str) -> None:
    [result] = run(ctx, Create("Patient", patient(), id=uid))
    assert result.version is not None and result.version.resource_id == uid


def test_results_come_in_plan_order(ctx: Context, uid: str) -> None:
    results = run(
        ctx,
        Update("Patient", f"a{uid}", patient(f"a{uid}")),
        Create("Patient", patient()),
        Delete("Patient", f"a{uid}"),
    )
    assert [r.status for r in results] == [201, 201, 204]
    assert results[2].headers["ETag"] == 'W/"2"'


def test_update_creates_updates_and_keeps_unchanged_content(ctx: Context, uid: str) -> None:
    [first] = run(ctx, Update("Patient", uid, patient(uid)))
    assert first.status == 201
    [second] = run(ctx, Update("Patient", uid, patient(uid, "Roe")))
    assert second.status == 200 and second.version is not None
    assert second.version.version_id == 2
    [same] = run(ctx, Update("Patient", uid, patient(uid, "Roe")))
    assert same.version is not None and same.version.version_id == 2  # no new version


def test_if_match_names_the_version_replaced(ctx: Context, uid: str) -> None:
    run(ctx, Update("Patient", uid, patient(uid)))
    error = fails(ctx, PreconditionFailed, Update("Patient", uid, patient(uid, "X"), if_match=7))
    assert "current version is 1" in error.message
    [ok] = run(ctx, Update("Patient", uid, patient(uid, "X"), if_match=1))
    assert ok.version is not None and ok.version.version_id == 2
    fails(ctx, PreconditionFailed, Update("Patient", f"n{uid}", patient(f"n{uid}"), if_match=1))
    fails(ctx, PreconditionFailed, Delete("Patient", uid, if_match=1))


def test_a_failing_write_is_named_by_its_index_and_nothing_is_kept(ctx: Context, uid: str) -> None:
    error = fails(
        ctx,
        PreconditionFailed,
        Update("Patient", f"a{uid}", patient(f"a{uid}")),
        Update("Patient", f"b{uid}", patient(f"b{uid}"), if_match=3),
    )
    assert error.write == 1
    assert ctx.repo.read("Patient", f"a{uid}") is None


def test_conditional_create_matches_none_one_or_many(ctx: Context, uid: str) -> None:
    criteria = (("identifier", f"urn:test|{uid}"),)
    [made] = run(ctx, ConditionalCreate("Patient", criteria, patient(uid=uid)))
    assert made.status == 201 and made.version is not None
    [found] = run(ctx, ConditionalCreate("Patient", criteria, patient(uid=uid)))
    assert found.status == 200 and found.version is not None
    assert found.version.resource_id == made.version.resource_id
    run(ctx, Create("Patient", patient(uid=uid)))
    fails(ctx, MultipleMatches, ConditionalCreate("Patient", criteria, patient(uid=uid)))


def test_conditional_update_resolves_its_one_match(ctx: Context, uid: str) -> None:
    criteria = (("identifier", f"urn:test|{uid}"),)
    [made] = run(ctx, ConditionalUpdate("Patient", criteria, patient(f"c{uid}", uid=uid)))
    assert made.status == 201 and made.version is not None
    assert made.version.resource_id == f"c{uid}"  # no match: the body's id
    [updated] = run(ctx, ConditionalUpdate("Patient", criteria, patient(None, "Roe", uid=uid)))
    assert updated.version is not None and updated.version.resource_id == f"c{uid}"
    assert updated.version.version_id == 2
    error = fails(ctx, Invalid, ConditionalUpdate("Patient", criteria, patient("other", uid=uid)))
    assert error.issues[0].expression == ("Patient.id",)
    run(ctx, Create("Patient", patient(uid=uid)))
    fails(ctx, MultipleMatches, ConditionalUpdate("Patient", criteria, patient(uid=uid)))


def test_patch_by_id_and_by_criteria(ctx: Context, uid: str) -> None:
    run(ctx, Update("Patient", uid, patient(uid, uid=uid)))
    replace = ({"op": "replace", "path": "/name/0/family", "value": "Roe"},)
    [by_id] = run(ctx, Patch("Patient", uid, replace, if_match=1))
    assert stored(by_id)["name"][0]["family"] == "Roe"
    again = ({"op": "replace", "path": "/name/0/family", "value": "Poe"},)
    criteria = (("identifier", f"urn:test|{uid}"),)
    [by_criteria] = run(ctx, Patch("Patient", None, again, criteria=criteria))
    assert by_criteria.version is not None and by_criteria.version.version_id == 3
    fails(ctx, NotFound, Patch("Patient", f"no{uid}", replace))
    run(ctx, Delete("Patient", uid))
    fails(ctx, Gone, Patch("Patient", uid, replace))


def test_delete_and_conditional_delete(ctx: Context, uid: str) -> None:
    run(ctx, Update("Patient", uid, patient(uid, uid=uid)))
    [nothing] = run(ctx, Delete("Patient", f"no{uid}"))
    assert nothing.status == 204 and "ETag" not in nothing.headers
    criteria = (("identifier", f"urn:test|{uid}"),)
    [deleted] = run(ctx, ConditionalDelete("Patient", criteria))
    assert deleted.headers["ETag"] == 'W/"2"'
    [none] = run(ctx, ConditionalDelete("Patient", criteria))
    assert none.status == 204 and "ETag" not in none.headers
    run(ctx, Create("Patient", patient(uid=uid)), Create("Patient", patient(uid=uid)))
    fails(ctx, MultipleMatches, ConditionalDelete("Patient", criteria))


# -- referential integrity ---------------------------------------------------------------------


def test_a_dangling_reference_is_refused_naming_its_element(ctx: Context, uid: str) -> None:
    run(ctx, Update("Patient", uid, patient(uid)))
    body = observation(
        subject=ref(f"Patient/{uid}"),
        performer=[ref(f"Patient/{uid}"), ref(f"Practitioner/no{uid}")],
    )
    error = fails(ctx, Invalid, Create("Patient", patient()), Create("Observation", body))
    assert error.write == 1
    assert [i.expression for i in error.issues] == [("Observation.performer[1]",)]
    assert f"Practitioner/no{uid}" in error.issues[0].diagnostics
    assert error.issues[0].code == "not-found"


@pytest.mark.parametrize(
    "form", ["Patient/{id}", BASE + "/Patient/{id}", "Patient/{id}/_history/1"]
)
def test_each_local_form_is_checked(ctx: Context, uid: str, form: str) -> None:
    reference = form.format(id=uid)
    fails(ctx, Invalid, Create("Observation", observation(subject=ref(reference))))
    run(ctx, Update("Patient", uid, patient(uid)))
    [made] = run(ctx, Create("Observation", observation(subject=ref(reference))))
    assert made.status == 201


def test_what_is_not_local_is_not_checked(ctx: Context) -> None:
    body = observation(
        contained=[{"resourceType": "Patient", "id": "p1"}],
        subject=ref("#p1"),
        performer=[
            ref("http://elsewhere.example/fhir/Practitioner/1"),
            {"identifier": {"system": "urn:x", "value": "1"}},
            ref("urn:uuid:0f6ea1a4-5f1b-4a8f-9a46-9ad3bd1a6f0e"),
        ],
    )
    [made] = run(ctx, Create("Observation", body))
    assert made.status == 201


def test_references_to_what_the_plan_writes_are_accepted_in_any_order(
    ctx: Context, uid: str
) -> None:
    results = run(
        ctx,
        Create("Observation", observation(subject=ref(f"Patient/{uid}"))),  # before its target
        Create("Patient", patient(), id=uid),
        Create("Observation", observation(subject=ref(f"Patient/{uid}"))),
    )
    assert [r.status for r in results] == [201, 201, 201]


def test_a_reference_to_a_deleted_resource_is_refused(ctx: Context, uid: str) -> None:
    run(ctx, Update("Patient", uid, patient(uid)))
    run(ctx, Delete("Patient", uid))
    error = fails(ctx, Invalid, Create("Observation", observation(subject=ref(f"Patient/{uid}"))))
    assert error.issues[0].expression == ("Observation.subject",)
    # Deleted by the same plan.
    run(ctx, Update("Patient", uid, patient(uid)))
    fails(
        ctx,
        Invalid,
        Create("Observation", observation(subject=ref(f"Patient/{uid}"))),
        Delete("Patient", uid),
    )


def test_deleting_a_referenced_resource_is_409_naming_the_referrer(ctx: Context, uid: str) -> None:
    run(
        ctx,
        Update("Patient", uid, patient(uid)),
        Update("Observation", f"o{uid}", observation(f"o{uid}", subject=ref(f"Patient/{uid}"))),
    )
    error = fails(
        ctx, Conflict, Update("Patient", f"x{uid}", patient(f"x{uid}")), Delete("Patient", uid)
    )
    assert error.write == 1
    assert f"Observation/o{uid}" in error.message and f"Patient/{uid}" in error.message
    fails(ctx, Conflict, ConditionalDelete("Patient", (("_id", uid),)))
    assert ctx.repo.read("Patient", uid) is not None


def test_a_version_reference_does_not_hold_its_target(ctx: Context, uid: str) -> None:
    """The version it names stays readable in history (a feed's Provenance names versions)."""
    run(ctx, Update("Patient", uid, patient(uid)))
    target = ref(f"Patient/{uid}/_history/1")
    body = {"resourceType": "Provenance", "target": [target], "recorded": "2024-01-01T00:00:00Z"}
    body["agent"] = [{"who": {"display": "feed"}}]
    run(ctx, Create("Provenance", body))
    [deleted] = run(ctx, Delete("Patient", uid))
    assert deleted.headers["ETag"] == 'W/"2"'


def test_deleting_referrer_and_target_together_succeeds(ctx: Context, uid: str) -> None:
    run(
        ctx,
        Update("Patient", uid, patient(uid)),
        Update("Observation", f"o{uid}", observation(f"o{uid}", subject=ref(f"Patient/{uid}"))),
    )
    results = run(ctx, Delete("Patient", uid), Delete("Observation", f"o{uid}"))
    assert [r.headers["ETag"] for r in results] == ['W/"2"', 'W/"2"']


def test_a_reference_dropped_by_an_update_no_longer_holds_the_target(
    ctx: Context, uid: str
) -> None:
    run(
        ctx,
        Update("Patient", uid, patient(uid)),
        Update("Observation", f"o{uid}", observation(f"o{uid}", subject=ref(f"Patient/{uid}"))),
    )
    # In one plan: the delete is checked once the plan is applied.
    run(ctx, Delete("Patient", uid), Update("Observation", f"o{uid}", observation(f"o{uid}")))
    assert ctx.repo.read("Patient", uid) is not None  # the deletion version
    run(ctx, Update("Patient", uid, patient(uid)))
    run(ctx, Delete("Patient", uid))


def test_the_setting_off_checks_nothing(ctx: Context, uid: str) -> None:
    off = without_integrity(ctx)
    body = observation(f"o{uid}", subject=ref(f"Patient/{uid}"))
    [made] = run(off, Update("Observation", f"o{uid}", body))
    assert made.status == 201
    run(off, Update("Patient", uid, patient(uid)))
    run(
        off,
        Update(
            "Observation",
            f"o{uid}",
            observation(f"o{uid}", subject=ref(f"Patient/{uid}"), status="amended"),
        ),
    )
    [deleted] = run(off, Delete("Patient", uid))
    assert deleted.headers["ETag"] == 'W/"2"'


def test_unresolved_names_what_would_be_refused(ctx: Context, uid: str) -> None:
    run(ctx, Update("Patient", uid, patient(uid)), Update("Patient", f"d{uid}", patient(f"d{uid}")))
    found = missing(
        ctx,
        Update("Patient", f"n{uid}", patient(f"n{uid}")),
        Delete("Patient", f"d{uid}"),
        Update(
            "Observation",
            f"o{uid}",
            observation(
                f"o{uid}",
                subject=ref(f"Patient/{uid}"),  # stored
                performer=[
                    ref(f"Patient/n{uid}"),  # written by the plan
                    ref(f"Patient/d{uid}"),  # deleted by the plan
                    ref(f"Practitioner/{uid}"),  # nowhere
                ],
            ),
        ),
    )
    assert found == [
        MissingReference(2, "Observation.performer[1]", f"Patient/d{uid}"),
        MissingReference(2, "Observation.performer[2]", f"Practitioner/{uid}"),
    ]
    assert missing(ctx, Create("Observation", observation(subject=ref(f"Patient/{uid}")))) == []


# -- the reference walk ------------------------------------------------------------------------


def test_the_walk_finds_references_with_their_paths() -> None:
    body = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/1"},
        "performer": [{"display": "x"}, {"reference": "http://hub.test/fhir/Practitioner/2"}],
        "contained": [
            {"resourceType": "Bundle", "entry": [{"resource": {"subject": ref("Patient/9")}}]}
        ],
        "hasMember": [{"reference": "Observation/3/_history/4"}, {"reference": "#c"}],
    }
    assert local_references(body, BASE) == [
        ("Observation.subject", "Patient/1", ("Patient", "1")),
        ("Observation.performer[1]", f"{BASE}/Practitioner/2", ("Practitioner", "2")),
        ("Observation.hasMember[0]", "Observation/3/_history/4", ("Observation", "3")),
    ]
    assert local_target("Patient?identifier=x") is None
    assert local_target("Unknown/1") is None
    assert local_target("urn:uuid:1") is None


def test_live_answers_what_the_transaction_wrote_and_forgets_what_it_deleted(
    ctx: Context, uid: str
) -> None:
    key = ("Patient", f"p-{uid}")
    with ctx.repo.transaction() as tx:
        execute(ctx, tx, Plan.of(Update("Patient", key[1], patient(key[1]))))
        assert tx.live([key]) == {key}
        assert tx.live([key, ("Patient", f"none-{uid}")]) == {key}
        execute(ctx, tx, Plan.of(Delete("Patient", key[1])))
        assert tx.live([key]) == set()
    with ctx.repo.transaction() as tx:
        assert tx.live([key]) == set()
        execute(ctx, tx, Plan.of(Update("Patient", key[1], patient(key[1]))))
    with ctx.repo.transaction() as tx:
        assert tx.live([key]) == {key}  # found by the query, then kept
        assert tx.live([key]) == {key}
