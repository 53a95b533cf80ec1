"""The app `hub serve` runs: the API, and the MLLP listener beside it (HUB_MLLP_ENABLED).

A factory named by string, so that each uvicorn worker process builds its own."""

from __future__ import annotations

from fastapi import FastAPI

from hub.api.app import create_app as api
from hub.mllp.serve import companion
from hub.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    return api(settings, companions=[companion(settings)])
