"""Validation of FHIR R4 content: the only module that imports `fhir.resources`.

The R4B models validate R4 (4.0.1) content for every resource type the hub
stores. Eighteen R4 types were withdrawn in R4B (the MedicinalProduct* family,
EffectEvidenceSynthesis, RiskEvidenceSynthesis and five Substance* types), and two
were remodelled (Evidence and EvidenceVariable, whose R4B models refuse R4 elements
such as `Evidence.exposureBackground`); for those twenty only the elements every
resource shares (`id`, `meta`, `implicitRules`, `language`, `text`) are checked by a
model. Required bindings are checked for every type, from the R4 definitions
(`hub.fhir.bindings`).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

from hub.errors import Invalid, Issue
from hub.fhir.bindings import check as check_bindings
from hub.fhir.content import check as check_content
from hub.fhir.deep import call_at_depth
from hub.fhir.types import R4_RESOURCE_TYPES
from hub.fhir.value_extensions import split as split_value_extensions

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")  # \Z: no newline after

# The default of the `max_resource_depth` setting, for callers without settings (golden tests).
DEFAULT_MAX_DEPTH = 200

# Elements every resource may carry; used for the types without an R4B model.
_SHARED_ELEMENTS = {"meta": "Meta", "text": "Narrative"}


# R4 types whose R4B models describe other content.
_REMODELLED = frozenset({"Evidence", "EvidenceVariable"})


@cache
def _model(resource_type: str) -> type[BaseModel] | None:
    if resource_type in _REMODELLED:
        return None
    try:
        return get_fhir_model_class(resource_type)
    except ValueError:
        return None


def is_resource_type(name: str) -> bool:
    return name in R4_RESOURCE_TYPES


def has_model(resource_type: str) -> bool:
    return _model(resource_type) is not None


def element_names(resource_type: str) -> frozenset[str]:
    """Top-level JSON element names of a resource type (empty when it has no model)."""
    model = _model(resource_type)
    if model is None:
        return frozenset()
    return frozenset((f.alias or name) for name, f in model.model_fields.items())


@cache
def holds_one(path: str) -> bool:
    """Whether the element at `Type.element` holds one value at most (max cardinality 1; for
    a choice such as `Observation.effective`, every one of its types). False for deeper paths,
    which are not worked out here, and for unknown elements."""
    steps = path.split(".")
    model = _model(steps[0]) if len(steps) == 2 else None
    if model is None:
        return False
    found = [
        f
        for name, f in model.model_fields.items()
        if (f.alias or name) == steps[1]
        or (
            isinstance(f.json_schema_extra, dict)
            and f.json_schema_extra.get("one_of_many") == steps[1]
        )
    ]
    return bool(found) and not any("List[" in str(f.annotation) for f in found)


def _path(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("resource_type", "__root__"):
            path += ".resourceType" if part == "resource_type" else ""
        else:
            path += f".{part}"
    return path


def _issues(
    resource_type: str, error: ValidationError, prefix: tuple[int | str, ...] = ()
) -> list[Issue]:
    issues = []
    for err in error.errors():
        loc = tuple(p for p in prefix + tuple(err["loc"]) if not str(p).startswith("function-"))
        message = err["msg"].replace("Value error, ", "")
        path = _path(resource_type, loc)
        issues.append(
            Issue(
                "structure" if err["type"] == "extra_forbidden" else "value",
                f"{path}: {message}",
                expression=(path,),
            )
        )
    return issues


def validate(
    resource: dict[str, Any],
    expected_type: str | None = None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> str:
    """Check a parsed resource against FHIR R4; return its type or raise `Invalid`.

    Elements nested more than `max_depth` steps deep and strings holding control characters
    are refused first, by a walk that does not recurse; the model validation recurses.
    """
    if not isinstance(resource, dict):
        raise Invalid("The body must be a JSON object holding a FHIR resource")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise Invalid("The resource has no resourceType", expression=("resourceType",))
    if not is_resource_type(resource_type):
        raise Invalid(f"Unknown resource type '{resource_type}'", expression=("resourceType",))
    if expected_type is not None and resource_type != expected_type:
        raise Invalid(
            f"The resourceType '{resource_type}' does not match "
            f"the endpoint's type '{expected_type}'",
            expression=("resourceType",),
        )
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID_PATTERN.match(rid)):
        raise Invalid(
            f"{resource_type}.id: '{rid}' is not a valid id", expression=(f"{resource_type}.id",)
        )
    depth, value_extension = check_content(resource_type, resource, max_depth)
    try:
        call_at_depth(depth, lambda: _validate_model(resource_type, resource, value_extension))
    except RecursionError:
        # Not expected within the measured budget (hub/fhir/deep.py); a 400, should a model
        # recurse more per step than measured, rather than a 500.
        message = f"{resource_type}: nests too deeply to be validated"
        raise Invalid(message, issues=[Issue("too-costly", message)]) from None
    check_bindings(resource_type, resource)
    return resource_type


def _validate_model(resource_type: str, resource: dict[str, Any], value_extension: bool) -> None:
    if value_extension:
        resource, removed = split_value_extensions(resource_type, resource)
        for path, value in removed:
            _validate_element("FHIRPrimitiveExtension", value, path)
    model = _model(resource_type)
    if model is not None:
        try:
            model.model_validate(resource)
        except ValidationError as e:
            issues = _issues(resource_type, e)
            raise Invalid(issues[0].diagnostics, issues=issues) from None
        return
    for element, element_type in _SHARED_ELEMENTS.items():
        if element in resource:
            _validate_element(element_type, resource[element], f"{resource_type}.{element}")


def _validate_element(element_type: str, value: Any, path: str) -> None:
    """Validate one element on its own; `path` names it in the issues."""
    element_model = _model(element_type)
    assert element_model is not None
    try:
        element_model.model_validate(value)
    except ValidationError as e:
        issues = _issues(path, e)
        raise Invalid(issues[0].diagnostics, issues=issues) from None


def _flagged(resource_type: str, flag: str) -> frozenset[str]:
    model = _model(resource_type)
    if model is None:
        return frozenset({"id", "meta"})
    names = set()
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get(flag):
            element = f.alias or name
            names.add(element)
            names.add(f"_{element}")  # the primitive's extensions travel with it
    return frozenset(names)


@cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """Top-level elements marked isSummary, for `_summary=true`."""
    return _flagged(resource_type, "summary_element_property") | {"resourceType", "id", "meta"}


@cache
def mandatory_elements(resource_type: str) -> frozenset[str]:
    """Top-level elements with a minimum cardinality of one, kept by `_summary=text`."""
    return _flagged(resource_type, "element_required") | {"resourceType", "id", "meta"}
