"""Index extraction: a resource's search values, typed, from each parameter's expression.

Runs at write time, inside the write's transaction, so the index always
describes the current version. Each value found comes with its R4 type
(`hub.search.paths`), and the parameter's type module (`hub.search.types`)
decides by it what rows the value gives: one table per search parameter type.
`:text` on tokens is served by string rows named `code:text`, and `:of-type` on
identifiers by token rows named `identifier:of-type`.
"""

from __future__ import annotations

import logging
from typing import Any

from hub.search.registry import Registry
from hub.search.types import TYPES
from hub.search.types.base import IndexRows, Rows

log = logging.getLogger(__name__)


def extract(registry: Registry, resource: dict[str, Any]) -> IndexRows:
    rows = Rows(resource["resourceType"], resource["id"])
    for param in registry.indexed(resource["resourceType"]):
        kind = TYPES[param.type]
        try:
            for i, part in enumerate(param.parts):
                for value, element_type in part.typed(resource):
                    kind.index(rows, param, value, element_type, part.target, i)
        except Exception as e:
            if param.url is None:  # a shipped definition: a bug to surface
                raise
            # A stored SearchParameter's expression must not make the resource unwritable.
            log.warning("search parameter %s failed on %s: %s", param.url, rows.key, e)
    return rows.rows
