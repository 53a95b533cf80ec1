"""FHIR search: parameter registry, index extraction, query building."""

from hub.search.criteria import build_query
from hub.search.extract import extract_tokens
from hub.search.registry import Registry, SearchParam, build, load_default

__all__ = ["Registry", "SearchParam", "build", "build_query", "extract_tokens", "load_default"]
