"""The FHIR store: the repository protocol and its SQL implementation."""

from hub.store.repository import (
    NewVersion,
    Query,
    Repository,
    TokenCriterion,
    TokenRow,
    Transaction,
    Version,
)
from hub.store.sql import SqlRepository, make_engine

__all__ = [
    "NewVersion",
    "Query",
    "Repository",
    "SqlRepository",
    "TokenCriterion",
    "TokenRow",
    "Transaction",
    "Version",
    "make_engine",
]
