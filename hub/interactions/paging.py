"""Parameters shared by history and search: page size and instants."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from hub.errors import Invalid
from hub.interactions.context import Context
from hub.search.parse import parse_count


def page_size(ctx: Context, params: Sequence[tuple[str, str]]) -> int:
    value = next((v for k, v in params if k == "_count"), None)
    if value is None:
        return ctx.settings.default_page_size
    return max(1, parse_count(value, ctx.settings.max_page_size))  # history has no _count=0


def parse_instant(name: str, value: str) -> datetime:
    text = value.strip().replace(" ", "+")  # a '+' in a query string arrives as a space
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            f"{name} must be an instant such as 2024-03-05T10:00:00Z, not '{value}'",
            expression=(name,),
        ) from None
    # In UTC: SQLite compares stored (UTC) timestamps as text, ignoring any offset.
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
