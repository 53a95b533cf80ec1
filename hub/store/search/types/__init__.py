"""The store's half of each search parameter type: its index table and conditions.

`TYPES` maps a parameter type to its module (the interface is `base.Conditions`),
as `hub.search.types.TYPES` does for parsing and extraction.
"""

from __future__ import annotations

from collections.abc import Mapping

from hub.store.search.types import (
    composite,
    date,
    number,
    quantity,
    reference,
    special,
    string,
    token,
    uri,
)
from hub.store.search.types.base import Conditions

TYPES: Mapping[str, Conditions] = {
    "string": string,
    "token": token,
    "date": date,
    "number": number,
    "quantity": quantity,
    "reference": reference,
    "uri": uri,
    "composite": composite,
    "special": special,
}

__all__ = ["TYPES", "Conditions"]
