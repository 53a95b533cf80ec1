"""FHIR search: parameter registry (data), parsing, index extraction, one module per type.

The SQL of search (conditions, query building, the engine) is `hub.store.search`.
"""

from hub.search.registry import Registry, SearchParam, load_default

__all__ = ["Registry", "SearchParam", "load_default"]
