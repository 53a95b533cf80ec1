"""The hub's one error hierarchy.

Every failure is a `HubError` with a category. This module is the one place
where a category becomes an HTTP status and an error becomes an
OperationOutcome: the REST API, batch/transaction entry responses and feed
acknowledgements all go through `status_of` and `operation_outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Category(StrEnum):
    INVALID = "invalid"
    NOT_FOUND = "not-found"
    GONE = "gone"
    NOT_ALLOWED = "not-allowed"
    NOT_ACCEPTABLE = "not-acceptable"
    CONFLICT = "conflict"
    PRECONDITION_FAILED = "precondition-failed"
    TOO_LARGE = "too-large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"
    BUSINESS_RULE = "business-rule"
    UNSUPPORTED = "unsupported"
    BUSY = "busy"
    FAULT = "fault"


_STATUS: dict[Category, int] = {
    Category.INVALID: 400,
    Category.UNSUPPORTED: 400,
    Category.NOT_FOUND: 404,
    Category.NOT_ALLOWED: 405,
    Category.NOT_ACCEPTABLE: 406,
    Category.CONFLICT: 409,
    Category.GONE: 410,
    Category.PRECONDITION_FAILED: 412,
    Category.TOO_LARGE: 413,
    Category.UNSUPPORTED_MEDIA_TYPE: 415,
    Category.BUSINESS_RULE: 422,
    Category.FAULT: 500,
    Category.BUSY: 503,
}


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: `code` is from the FHIR IssueType value set."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


@dataclass(eq=False)
class HubError(Exception):
    """Base of every error the hub reports to a client or a feed."""

    message: str
    expression: tuple[str, ...] = ()
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    # Which write of a plan failed (set by hub.interactions.executor): a Bundle names its entry.
    write: int | None = None

    category = Category.FAULT
    issue_code = "exception"

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if not self.issues:
            self.issues = [Issue(self.issue_code, self.message, expression=self.expression)]

    def __str__(self) -> str:
        return self.message


class Invalid(HubError):
    category = Category.INVALID
    issue_code = "invalid"


class Unsupported(HubError):
    category = Category.UNSUPPORTED
    issue_code = "not-supported"


class NotFound(HubError):
    category = Category.NOT_FOUND
    issue_code = "not-found"


class Gone(HubError):
    category = Category.GONE
    issue_code = "deleted"


class MethodNotAllowed(HubError):
    category = Category.NOT_ALLOWED
    issue_code = "not-supported"


class NotAcceptable(HubError):
    category = Category.NOT_ACCEPTABLE
    issue_code = "not-supported"


class Conflict(HubError):
    category = Category.CONFLICT
    issue_code = "conflict"
    # The resources ("Type/id") whose write lost, when known: a Bundle names their entries.
    resources: tuple[str, ...] = ()


class PreconditionFailed(HubError):
    category = Category.PRECONDITION_FAILED
    issue_code = "conflict"


class MultipleMatches(PreconditionFailed):
    issue_code = "multiple-matches"


class PayloadTooLarge(HubError):
    category = Category.TOO_LARGE
    issue_code = "too-costly"


class UnsupportedMediaType(HubError):
    category = Category.UNSUPPORTED_MEDIA_TYPE
    issue_code = "not-supported"


class BusinessRule(HubError):
    category = Category.BUSINESS_RULE
    issue_code = "business-rule"


class Busy(HubError):
    """Momentarily unable to answer (a lock or a connection not had in time): 503, and
    `Retry-After` tells the client when to try again."""

    category = Category.BUSY
    issue_code = "transient"
    retry_after: int = 1  # seconds

    def __post_init__(self) -> None:
        super().__post_init__()
        self.headers.setdefault("Retry-After", str(self.retry_after))


class TooCostly(HubError):
    """A search beyond one of the configured limits (criteria, OR values, chain, _has):
    refused before it runs, with the limit named, because it could hold the store for long."""

    category = Category.INVALID
    issue_code = "too-costly"


class Timeout(Busy):
    """A search stopped when it ran past its time limit (or its client went away): 503, as
    the store may answer it when less loaded; `timeout` is a kind of `transient` issue."""

    issue_code = "timeout"


def status_of(error: HubError) -> int:
    return _STATUS[error.category]


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def outcome_of(error: HubError) -> dict[str, Any]:
    return operation_outcome(error.issues)


def information(message: str, code: str = "informational") -> dict[str, Any]:
    """An OperationOutcome that reports success (for `Prefer: return=OperationOutcome`)."""
    return operation_outcome([Issue(code, message, severity="information")])
