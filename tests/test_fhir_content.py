"""hub.fhir's checks and serialisation of deep resources, without HTTP."""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest
import test_bad_input
from test_bad_input import nested_items

from hub.errors import Invalid
from hub.fhir import validate
from hub.fhir.jsonbytes import dumps
from hub.fhir.models import DEFAULT_MAX_DEPTH
from hub.settings import Settings


def test_validate_defaults_to_the_settings_depth() -> None:
    assert Settings.model_fields["max_resource_depth"].default == DEFAULT_MAX_DEPTH
    assert test_bad_input.DEFAULT_MAX_DEPTH == DEFAULT_MAX_DEPTH


def test_deep_validation_still_reports_invalid_elements() -> None:
    """A deep resource is validated in a thread of its own: its errors come back the same."""
    resource = nested_items(150)
    innermost = resource["item"][0]
    while "item" in innermost:
        innermost = innermost["item"][0]
    innermost["required"] = "maybe"
    with pytest.raises(Invalid) as raised:
        validate(resource)
    path = "Questionnaire" + ".item[0]" * 150 + ".required"
    assert raised.value.issues[0].expression == (path,)


def test_dumps_matches_orjson_at_any_depth() -> None:
    shallow = {"b": [1, 2.5, "é"], "a": {"z": None, "y": True}}
    for option in (0, orjson.OPT_SORT_KEYS):
        assert dumps(shallow, option) == orjson.dumps(shallow, option=option)
    deep: Any = {"leaf": "x", "b": 1}
    for i in range(400):  # 801 levels: beyond orjson's 254 for writing, within 1024 for reading
        deep = {"z": i, "item": [deep], "a": "s"}
    assert orjson.loads(dumps(deep)) == deep
    sorted_bytes = dumps(deep, orjson.OPT_SORT_KEYS)
    assert sorted_bytes.startswith(b'{"a":"s","item":[{"a":"s","item":')
    assert orjson.loads(sorted_bytes) == deep
    with pytest.raises(orjson.JSONEncodeError):
        dumps({"not json": {1, 2}})


def test_a_recursion_error_in_validation_is_a_400() -> None:
    """Should a model recurse more than measured, the client still gets a 400, not a 500."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(120)  # what a caller deep in its own recursion would have left
    try:
        with pytest.raises(Invalid) as raised:
            validate(nested_items(20))
    finally:
        sys.setrecursionlimit(before)
    assert raised.value.issues[0].code == "too-costly"
