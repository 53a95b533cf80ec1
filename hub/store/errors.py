"""The database driver's errors, as the store's callers see them (without importing the
driver's toolkit): a statement or a connection that failed (a retry may help)."""

from sqlalchemy.exc import DBAPIError as DatabaseError

__all__ = ["DatabaseError"]
