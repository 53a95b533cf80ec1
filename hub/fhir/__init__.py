"""FHIR R4 knowledge: resource types, validation and element facts."""

from hub.fhir.models import (
    ID_PATTERN,
    element_names,
    has_model,
    holds_one,
    is_resource_type,
    mandatory_elements,
    summary_elements,
    validate,
)
from hub.fhir.types import R4_RESOURCE_TYPES

__all__ = [
    "ID_PATTERN",
    "R4_RESOURCE_TYPES",
    "element_names",
    "has_model",
    "holds_one",
    "is_resource_type",
    "mandatory_elements",
    "summary_elements",
    "validate",
]
