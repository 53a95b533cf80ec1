"""Settings for a command: validated when it starts, a bad value stopping it by name."""

from __future__ import annotations

import click

from hub.settings import InvalidSettings, Settings, load_settings


def settings() -> Settings:
    """The settings now (a command's options set HUB_* variables first)."""
    try:
        return load_settings()
    except InvalidSettings as e:
        raise click.ClickException(str(e)) from None
