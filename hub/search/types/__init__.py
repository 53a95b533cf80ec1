"""Search parameter types, one module each, all with the interface of `base.ParamType`.

`TYPES` is the table from a parameter's type to its module: parsing, index
extraction and sorting look a type up here, never test it one by one.
"""

from __future__ import annotations

from collections.abc import Mapping

from hub.search.types import (
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
from hub.search.types.base import ParamType

TYPES: Mapping[str, ParamType] = {
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

__all__ = ["TYPES", "ParamType"]
