"""The JSON walk for plain search expressions gives what fhirpathpy gives.

For every shipped definition evaluated by the walk, a resource is built that
holds a value at each of its paths (and at every choice of a choice element);
the walk and fhirpathpy must find the same values on it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from hub.fhir.models import ID_PATTERN
from hub.search.paths import (
    _AS_THEN,
    _CHOICES,
    _PLAIN,
    _RESOLVE,
    _WHERE_EQUALS,
    _context_type,
    compile_part,
    slow_parts,
    split_union,
)
from hub.search.registry import default_definitions, load_default

REGISTRY = load_default()


def _plant(resource: dict[str, Any], names: list[str], leaf: Any) -> None:
    node = resource
    for i, name in enumerate(names):
        last = i == len(names) - 1
        if last:
            node.setdefault(name, leaf)
            return
        child = node.get(name)
        if child is None:
            child = [{}]
            node[name] = child
        node = child[0] if isinstance(child, list) else child


_PRIMITIVES = {
    "DateTime": "2020-01-01T10:00:00Z",
    "Date": "2020-01-01",
    "Instant": "2020-01-01T10:00:00Z",
    "Time": "10:00:00",
    "String": "s",
    "Boolean": True,
    "Integer": 1,
    "Decimal": 1.5,
    "Uri": "urn:x",
    "Url": "http://x",
    "Canonical": "http://x",
    "Code": "c",
    "Id": "i",
}
_COMPLEX = {"reference": "Patient/1", "value": 1, "coding": [{"code": "c"}], "start": "2020"}
_CHOICE_VALUES: dict[str, Any] = {
    "Period": {"start": "2020"},
    "Quantity": {"value": 1},
    "Age": {"value": 1},
    "Duration": {"value": 1},
    "Range": {"low": {"value": 1}},
    "CodeableConcept": {"coding": [{"code": "c"}]},
    "Reference": {"reference": "Patient/1"},
}


def _sample(resource_type: str, expression: str) -> dict[str, Any]:
    """A resource with a value at the path of one plain expression (one choice only)."""
    resource: dict[str, Any] = {"resourceType": resource_type, "id": "x"}
    for part in split_union(expression):
        m = _PLAIN.match(_RESOLVE.sub("", part))
        if not m or not m["path"].startswith(resource_type + "."):
            continue
        names = m["path"].split(".")[1:]
        parent, _, last = m["path"].rpartition(".")
        choices = _CHOICES.get(f"{_context_type(parent)}.{last}")
        if choices:
            wanted = m["type"] or choices[0]
            choice = next((c for c in choices if c.lower() == wanted.lower()), choices[0])
            leaf = _PRIMITIVES.get(choice, _CHOICE_VALUES.get(choice, dict(_COMPLEX)))
            _plant(resource, [*names[:-1], names[-1] + choice], leaf)
        else:
            _plant(resource, names, [dict(_COMPLEX)])
    return resource


_FHIRPATHPY_MISSES = re.compile(r"as\(Range\)|as Range|as SampledData")


def part_text(expression: str, part: Any, param: Any) -> str:
    return split_union(expression)[param.parts.index(part)]


TYPES = sorted(t for t in default_definitions() if t != "Resource")


@pytest.mark.parametrize("resource_type", TYPES)
def test_walk_matches_fhirpathpy(resource_type: str) -> None:
    compared = 0
    for code, param in REGISTRY.for_type(resource_type).items():
        if param.base == ("Resource",):
            continue
        slow = slow_parts(param.expression)
        assert len(slow) == len(param.parts)
        for fast, reference in zip(param.parts, slow, strict=True):
            assert fast.target == reference.target, code
            if "_walker" not in fast.evaluate.__qualname__:
                continue
            resource = _sample(resource_type, part_text(param.expression, fast, param))
            found, expected = fast.evaluate(resource), reference.evaluate(resource)
            if not expected and _FHIRPATHPY_MISSES.search(part_text(param.expression, fast, param)):
                # fhirpathpy finds nothing for `as(Range)` / `as SampledData` on a present
                # element; the walk must still find the planted value.
                assert found, (resource_type, code)
            else:
                assert found == expected, (resource_type, code)
            compared += 1
    assert compared > 0


def test_sample_is_not_empty() -> None:
    # The comparison above means something only if the samples hold values.
    sample = _sample("Observation", "Observation.code | Observation.value.as(Quantity)")
    assert "code" in sample and "valueQuantity" in sample


def test_parameters_with_one_value_per_resource_are_known() -> None:
    registry = load_default()
    single = {
        (t, c): registry.get(t, c).single  # type: ignore[union-attr]
        for t, c in [
            ("Observation", "date"),  # Observation.effective[x], a choice of one value
            ("Encounter", "date"),  # Encounter.period
            ("Patient", "birthdate"),
            ("Patient", "given"),  # Patient.name.given: repeats
            ("Observation", "category"),  # Observation.category: 0..*
            ("CarePlan", "activity-date"),  # deeper than one step: not worked out
        ]
    }
    assert single == {
        ("Observation", "date"): True,
        ("Encounter", "date"): True,
        ("Patient", "birthdate"): True,
        ("Patient", "given"): False,
        ("Observation", "category"): False,
        ("CarePlan", "activity-date"): False,
    }


def test_token_and_date_composites_pair_their_parameters() -> None:
    registry = load_default()
    composite = registry.paired("Observation", "code", "date")
    assert composite is not None and composite.code == "code-date"
    assert registry.paired("Observation", "category", "date") is None  # no such composite
    assert registry.paired("CarePlan", "code", "activity-date") is None


def test_where_equals_filters_like_fhirpathpy() -> None:
    # Every shipped `X.where(field='value')` part is walked; each must keep exactly the
    # elements fhirpathpy keeps: the matching one, not another value, not a missing field.
    compared = 0
    for resource_type in TYPES:
        for code, param in REGISTRY.for_type(resource_type).items():
            slow = slow_parts(param.expression)
            for fast, reference in zip(param.parts, slow, strict=True):
                if "_keeping" not in fast.evaluate.__qualname__:
                    continue
                m = _WHERE_EQUALS.match(part_text(param.expression, fast, param))
                assert m is not None, (resource_type, code)
                root, *names = m["path"].split(".")
                resource: dict[str, Any] = {"resourceType": root, "id": "x"}
                elements = [
                    {m["field"]: m["value"], "value": "kept"},
                    {m["field"]: m["value"] + "-other", "value": "dropped"},
                    {"value": "no field"},
                ]
                _plant(resource, names, elements)
                found = fast.evaluate(resource)
                assert found == reference.evaluate(resource), (resource_type, code)
                assert [e["value"] for e in found] == ["kept"], (resource_type, code)
                compared += 1
    assert compared >= 6  # phone and email of Patient, Person, Practitioner, ...


def test_a_path_under_one_choice_type_is_walked_like_fhirpathpy() -> None:
    # `(Observation.value as CodeableConcept).text`: the walk goes into the one type's key
    # only; the element under another type, or missing, gives nothing.
    compared = 0
    for resource_type in TYPES:
        for code, param in REGISTRY.for_type(resource_type).items():
            slow = slow_parts(param.expression)
            for fast, reference in zip(param.parts, slow, strict=True):
                m = _AS_THEN.match(_RESOLVE.sub("", part_text(param.expression, fast, param)))
                if m is None:
                    continue
                assert "_then" in fast.evaluate.__qualname__, (resource_type, code)
                root, *names = m["path"].split(".")
                parent, _, last = m["path"].rpartition(".")
                choices = _CHOICES[f"{_context_type(parent)}.{last}"]
                for planted in choices:
                    resource: dict[str, Any] = {"resourceType": root, "id": "x"}
                    leaf = {m["rest"].split(".")[0]: "found"}
                    _plant(
                        resource, [*names[:-1], names[-1] + planted[0].upper() + planted[1:]], leaf
                    )
                    found = fast.evaluate(resource)
                    assert found == reference.evaluate(resource), (resource_type, code, planted)
                    assert [v for v, _ in fast.typed(resource)] == found
                    assert found == (["found"] if planted == m["type"] else [])
                    compared += 1
    assert compared > 0  # Observation value-string, ...


def test_a_part_skipped_by_its_first_keys_finds_what_its_walk_finds() -> None:
    # `Part.typed` answers nothing without walking when the element holds none of the part's
    # first keys: that must be exactly when the walk finds nothing.
    checked = 0
    for resource_type in TYPES:
        for param in REGISTRY.for_type(resource_type).values():
            for part in param.parts:
                if part.keys is None:
                    continue
                text = part_text(param.expression, part, param)
                for resource in (_sample(resource_type, text), {"resourceType": resource_type}):
                    assert [v for v, _ in part.typed(resource)] == part.evaluate(resource)
                checked += 1
    assert checked > 500


def test_where_equals_on_a_repeating_or_choice_field_means_what_fhirpath_means() -> None:
    # `given` repeats: FHIRPath's `=` holds when the field holds exactly that one string.
    part = compile_part("Patient.name.where(given='John')")
    assert "_keeping" in part.evaluate.__qualname__
    (reference,) = slow_parts("Patient.name.where(given='John')")
    names = [{"given": ["John"]}, {"given": ["John", "Paul"]}, {"family": "x"}, {"given": []}]
    patient = {"resourceType": "Patient", "id": "x", "name": names}
    assert part.evaluate(patient) == reference.evaluate(patient) == [{"given": ["John"]}]
    # `value[x]` is a choice: `value` is not a JSON key, so fhirpathpy answers it.
    choice = compile_part("Patient.extension.where(value='x')")
    assert "_keeping" not in choice.evaluate.__qualname__


def test_an_id_ends_at_its_last_character() -> None:
    assert ID_PATTERN.match("abc-1.2")
    assert not ID_PATTERN.match("abc\n")
    assert not ID_PATTERN.match("a" * 65)
