"""The HTTP layer: FastAPI routes over the interactions."""

from hub.api.app import create_app
from hub.assembly import build_context

__all__ = ["build_context", "create_app"]
