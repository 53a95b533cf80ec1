"""The FHIR store: the repository protocol and its SQL implementation."""

from hub.store.repository import IndexRows, NewVersion, Repository, Transaction, Version
from hub.store.sql import SqlRepository, make_engine

__all__ = [
    "IndexRows",
    "NewVersion",
    "Repository",
    "SqlRepository",
    "Transaction",
    "Version",
    "make_engine",
]
