"""The API's records as pydantic models. Amounts are `Decimal` (parsed from the wire's decimal
strings, never through a float), times are `datetime`. Each model names the OpenAPI schema it
mirrors (`schema_name`); a test holds every model to the server's `GET /v1/openapi.json`, so
the two cannot drift. Unknown fields a newer server adds are ignored."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    #: The OpenAPI schema this model mirrors.
    schema_name: ClassVar[str]


class Grant(_Model):
    schema_name: ClassVar[str] = "GrantResponse"
    grant_id: str
    #: grant | refund | allowance
    kind: str
    amount: Decimal
    #: Credits of this grant still in the balance (free plus what holds reserved).
    remaining: Decimal
    priority: int
    expires_at: Optional[datetime] = None
    reference: Optional[str] = None
    metadata: dict[str, Any]
    created_at: datetime
    voided_at: Optional[datetime] = None


class VoidedGrant(_Model):
    """A grant as an operator voided it, and what the void took back from the balance."""

    schema_name: ClassVar[str] = "VoidGrantResponse"
    grant: Grant
    voided: Decimal


class Account(_Model):
    schema_name: ClassVar[str] = "AccountResponse"
    account_id: str
    balance: Decimal
    held: Decimal
    available: Decimal
    low_balance_threshold: Optional[Decimal] = None
    grants: list[Grant]


class Hold(_Model):
    schema_name: ClassVar[str] = "HoldResponse"
    hold_id: str
    account_id: str
    amount: Decimal
    captured: Decimal
    remaining: Decimal
    #: pending | captured | released | expired
    state: str
    expires_at: datetime
    created_at: datetime
    reference: Optional[str] = None
    metadata: dict[str, Any]


class Entry(_Model):
    schema_name: ClassVar[str] = "EntryResponse"
    seq: int
    #: grant | refund | hold | capture | release | expire | extend | debit | grant_expired | void
    kind: str
    amount: Decimal
    hold_id: Optional[str] = None
    grant_id: Optional[str] = None
    reference: Optional[str] = None
    balance_after: Decimal
    held_after: Decimal
    at: datetime
    idempotency_key: Optional[str] = None


class Debit(_Model):
    schema_name: ClassVar[str] = "DebitResponse"
    account_id: str
    amount: Decimal
    reference: Optional[str] = None
    balance: Decimal
    held: Decimal
    available: Decimal


class EstimateLine(_Model):
    schema_name: ClassVar[str] = "EstimateLine"
    label: str
    amount: Decimal
    detail: Optional[str] = None


class Estimate(_Model):
    schema_name: ClassVar[str] = "EstimateResponse"
    total: Decimal
    breakdown: list[EstimateLine]
    catalog_version: str


class Run(_Model):
    schema_name: ClassVar[str] = "RunResponse"
    run_id: str
    thread_id: str
    account_id: str
    turn_index: int
    #: running | succeeded | failed | canceled | interrupted
    state: str
    hold_id: Optional[str] = None
    created_at: datetime
    updated_at: datetime
    #: Plan, costs, credit log, answer, error (`null` when the stored document does not read).
    details: Optional[dict[str, Any]] = None


class Job(_Model):
    schema_name: ClassVar[str] = "JobResponse"
    job_id: str
    account_id: str
    thread_id: str
    run_id: str
    #: queued | running | succeeded | failed | canceled
    status: str
    stage: str
    progress: int
    price: Decimal
    cancel_requested: bool
    retry_source_job_id: Optional[str] = None
    can_user_retry: bool
    attempts: int
    error_stage: Optional[str] = None
    error_code: Optional[str] = None
    error_detail: Optional[str] = None
    refunded: bool
    refund_applied_at: Optional[datetime] = None
    artifact_id: Optional[str] = None
    artifact_url: Optional[str] = None
    created_at: datetime
    updated_at: datetime
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None


class CreditReserved(_Model):
    """A run's hold was taken: `amount` for the worst case of its plan."""

    schema_name: ClassVar[str] = "CreditReservedPayload"
    hold_id: str
    amount: Decimal
    breakdown: list[EstimateLine]


class CreditSettled(_Model):
    """A run's hold was settled: `actual` captured of `reserved`, `refunded` given back."""

    schema_name: ClassVar[str] = "CreditSettledPayload"
    hold_id: str
    reserved: Decimal
    actual: Decimal
    captured: Decimal
    refunded: Decimal
    log: list[dict[str, Any]]


class RunFailed(_Model):
    """A run's `error` event: it ended without an answer; its hold was released."""

    schema_name: ClassVar[str] = "ErrorPayload"
    code: str
    message: str
    recoverable: bool
    required: Optional[Decimal] = None
    available: Optional[Decimal] = None


class Done(_Model):
    schema_name: ClassVar[str] = "DonePayload"
    final: bool


class Token(_Model):
    schema_name: ClassVar[str] = "TokenPayload"
    delta: str
    final: bool
    metadata: dict[str, Any]


#: The payloads the client types; every other event's payload stays a dict.
Payload = Union[CreditReserved, CreditSettled, RunFailed, Done, Token, dict[str, Any]]

_PAYLOADS: dict[str, type[Union[CreditReserved, CreditSettled, RunFailed, Done, Token]]] = {
    "credit_reserved": CreditReserved,
    "credit_settled": CreditSettled,
    "error": RunFailed,
    "done": Done,
    "token": Token,
}


class RunEvent(_Model):
    """One frame of a run's stream. `id` (`<thread_id>:<seq>`) resumes after it."""

    schema_name: ClassVar[str] = "RunEvent"
    type: str
    thread_id: str
    run_id: str
    seq: int
    ts: datetime
    node: Optional[str] = None
    step_idx: Optional[int] = None
    payload: Any

    @property
    def id(self) -> str:
        return f"{self.thread_id}:{self.seq}"

    @property
    def is_final(self) -> bool:
        """`done` or `error`: the run ended."""
        return self.type in ("done", "error")

    def typed_payload(self) -> Payload:
        """The payload as its model for `credit_reserved`, `credit_settled`, `error`, `done` and
        `token`; a dict for every other type."""
        model = _PAYLOADS.get(self.type)
        if model is None or not isinstance(self.payload, dict):
            return dict(self.payload) if isinstance(self.payload, dict) else {"value": self.payload}
        parsed: Payload = model.model_validate(self.payload)
        return parsed


#: Grant states `Client.grants` lists.
GrantState = Literal["active", "expired", "voided"]

#: Hold states `Client.holds` lists.
HoldState = Literal["pending", "captured", "released", "expired"]

#: Every model a test holds to the OpenAPI document.
MODELS: tuple[type[_Model], ...] = (
    Grant,
    VoidedGrant,
    Account,
    Hold,
    Entry,
    Debit,
    EstimateLine,
    Estimate,
    Run,
    Job,
    CreditReserved,
    CreditSettled,
    RunFailed,
    Done,
    Token,
    RunEvent,
)
