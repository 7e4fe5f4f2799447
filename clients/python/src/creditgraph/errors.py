"""Every failure the client raises. A server's RFC 9457 problem becomes the exception of its
stable `code`, carrying the problem's fields; anything else the server says is a
`ProtocolError`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Mapping, Optional


class CreditgraphError(Exception):
    """The base of every error this package raises."""


class ProtocolError(CreditgraphError):
    """The server answered something other than JSON or problem+json (a proxy's error page, a
    truncated body): `status` and `content_type` say what came."""

    def __init__(self, message: str, *, status: int, content_type: str) -> None:
        super().__init__(f"{message} (HTTP {status}, content type {content_type or 'none'})")
        self.status = status
        self.content_type = content_type


class StreamInterrupted(CreditgraphError):
    """A run's event stream ended without `done` or `error`, and resuming it failed.
    `last_event_id` resumes it later (`Client.resume(run_id, last_event_id)`)."""

    def __init__(self, message: str, *, run_id: Optional[str], last_event_id: Optional[str]) -> None:
        super().__init__(f"{message} (run {run_id}, last event {last_event_id})")
        self.run_id = run_id
        self.last_event_id = last_event_id


class HoldReleaseFailed(CreditgraphError):
    """A hold that had to be released could not be: the credits stay reserved until the hold's
    TTL. Never swallowed: the caller must know."""

    def __init__(self, hold_id: str, cause: BaseException) -> None:
        super().__init__(f"hold {hold_id} could not be released: {cause}")
        self.hold_id = hold_id


class ApiError(CreditgraphError):
    """A problem+json answer: `status`, the stable `code`, `detail`, the server's `request_id`
    (to find its log line) and every member of the problem in `problem`."""

    def __init__(self, problem: Mapping[str, Any], status: int) -> None:
        self.problem = dict(problem)
        self.status = status
        self.code = str(problem.get("code", "unknown"))
        self.detail = str(problem.get("detail", ""))
        self.request_id: Optional[str] = problem.get("request_id")
        super().__init__(f"{self.code}: {self.detail} (HTTP {status})")


def _decimal(problem: Mapping[str, Any], name: str) -> Decimal:
    return Decimal(str(problem.get(name, "0")))


class InsufficientCredits(ApiError):
    """402: the account cannot cover `required`; `available` is what it has."""

    def __init__(self, problem: Mapping[str, Any], status: int) -> None:
        super().__init__(problem, status)
        self.required = _decimal(problem, "required")
        self.available = _decimal(problem, "available")


class HoldNotPending(ApiError):
    """409: the hold was already captured, released or expired (`state`)."""

    def __init__(self, problem: Mapping[str, Any], status: int) -> None:
        super().__init__(problem, status)
        self.state = str(problem.get("state", ""))


class AmountExceedsHold(ApiError):
    """409: a capture above what the hold has left (`requested`, `remaining`)."""

    def __init__(self, problem: Mapping[str, Any], status: int) -> None:
        super().__init__(problem, status)
        self.requested = _decimal(problem, "requested")
        self.remaining = _decimal(problem, "remaining")


class HoldExpired(ApiError):
    """409: the hold reached its expiry before this command."""


class IdempotencyConflict(ApiError):
    """409: the `Idempotency-Key` was used before with another request."""


class GrantCreditsHeld(ApiError):
    """409: pending holds reserve `held` of the grant a void named (release them first)."""

    def __init__(self, problem: Mapping[str, Any], status: int) -> None:
        super().__init__(problem, status)
        self.held = _decimal(problem, "held")


class NotFound(ApiError):
    """404: the account, hold, run, job, thread or grant does not exist."""


class AccountNotFound(NotFound):
    pass


class HoldNotFound(NotFound):
    pass


class RateLimited(ApiError):
    """429: retry after `retry_after_seconds`; the request applied nothing."""

    def __init__(self, problem: Mapping[str, Any], status: int) -> None:
        super().__init__(problem, status)
        self.retry_after_seconds = int(problem.get("retry_after_seconds", 1))


class Unauthorized(ApiError):
    """401: no token, or one the server does not know."""


class Forbidden(ApiError):
    """403: the token's role may not do this (a service token on an admin route)."""


class InvalidRequest(ApiError):
    """422 (or 400, 413): the request is malformed; `detail` says what."""


class Unavailable(ApiError):
    """503: the store or the instance cannot take the request now (retried by the client)."""


_BY_CODE: dict[str, type[ApiError]] = {
    "insufficient_credits": InsufficientCredits,
    "hold_not_pending": HoldNotPending,
    "amount_exceeds_hold": AmountExceedsHold,
    "hold_expired": HoldExpired,
    "idempotency_conflict": IdempotencyConflict,
    "account_not_found": AccountNotFound,
    "hold_not_found": HoldNotFound,
    "grant_credits_held": GrantCreditsHeld,
    "rate_limited": RateLimited,
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: InvalidRequest,
    422: InvalidRequest,
    503: Unavailable,
}


def error_for(problem: Mapping[str, Any], status: int) -> ApiError:
    """The exception of a problem: by its code, else by its status, else `ApiError`."""
    kind = _BY_CODE.get(str(problem.get("code"))) or _BY_STATUS.get(status) or ApiError
    return kind(problem, status)
