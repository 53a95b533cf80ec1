"""The HTTP layer: FastAPI routes over the interactions."""

from hub.api.app import build_context, create_app

__all__ = ["build_context", "create_app"]
