"""creditgraph's Python client: prepaid credits for AI agent work, reserved before it runs and
settled at its real cost after, on every path.

    from creditgraph import Client

    client = Client("http://127.0.0.1:8080", token="...")
    with client.hold("alice", "5", reference="plan-42") as hold:
        cost = run_the_plan()          # raises? the hold is released
        hold.settle(cost)              # the real cost captured, the rest released
"""

from ._amounts import AmountLike
from ._client import AsyncClient, Client
from ._holds import AsyncHoldContext, HoldContext
from .errors import (
    AccountNotFound,
    AmountExceedsHold,
    ApiError,
    CreditgraphError,
    Forbidden,
    GrantCreditsHeld,
    HoldExpired,
    HoldNotFound,
    HoldNotPending,
    HoldReleaseFailed,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    ProtocolError,
    RateLimited,
    StreamInterrupted,
    Unauthorized,
    Unavailable,
)
from .models import (
    Account,
    CreditReserved,
    CreditSettled,
    Debit,
    Done,
    Entry,
    Estimate,
    EstimateLine,
    Grant,
    Hold,
    Job,
    Run,
    RunEvent,
    RunFailed,
    Token,
    VoidedGrant,
)

__all__ = [
    "Account", "AccountNotFound", "AmountExceedsHold", "AmountLike", "ApiError", "AsyncClient", "AsyncHoldContext",
    "Client", "CreditReserved", "CreditSettled", "CreditgraphError", "Debit", "Done", "Entry", "Estimate",
    "EstimateLine", "Forbidden", "Grant", "GrantCreditsHeld", "Hold", "HoldContext", "HoldExpired", "HoldNotFound", "HoldNotPending",
    "HoldReleaseFailed", "IdempotencyConflict", "InsufficientCredits", "InvalidRequest", "Job", "NotFound",
    "ProtocolError", "RateLimited", "Run", "RunEvent", "RunFailed", "StreamInterrupted", "Token", "Unauthorized",
    "Unavailable", "VoidedGrant",
]
