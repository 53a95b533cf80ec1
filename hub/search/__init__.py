"""FHIR search: parameter registry (data), index extraction, parsing, query building."""

from hub.search.registry import Registry, SearchParam, load_default

__all__ = ["Registry", "SearchParam", "load_default"]
