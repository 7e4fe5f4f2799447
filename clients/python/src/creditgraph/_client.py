"""`Client` and `AsyncClient`: one method per API call, typed answers, safe retries."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any, AsyncIterator, Iterator, Mapping, Optional, Sequence
from urllib.parse import quote

import httpx

from . import _http
from ._amounts import AmountLike, amount_text
from ._holds import AsyncHoldContext, HoldContext
from ._sse import SseEvent, aevents, events
from .errors import ProtocolError, StreamInterrupted, error_for
from .models import (
    Account,
    Debit,
    Entry,
    Estimate,
    Grant,
    GrantState,
    Hold,
    HoldState,
    Job,
    Run,
    RunEvent,
    VoidedGrant,
)

#: Default time limits: connecting, and each read (a run's stream sends heartbeats well inside it).
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: A dropped run stream is resumed (`Last-Event-ID`) at most this many times in a row.
RESUMES_MAX = 5
#: Page size of the iterating list calls.
PAGE_SIZE = 1_000
#: A hold's time to live when the caller names none (extended while its block runs).
HOLD_TTL_SECONDS = 120


def _segment(value: str) -> str:
    return quote(value, safe="")


def _time(value: Optional[datetime]) -> Optional[str]:
    return value.isoformat() if value is not None else None


def _hold_body(account_id: str, amount: AmountLike, ttl_seconds: Optional[int], reference: Optional[str],
               metadata: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"account_id": account_id, "amount": amount_text(amount)}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    if reference is not None:
        body["reference"] = reference
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _grant_body(amount: AmountLike, reference: Optional[str], priority: Optional[int],
                expires_at: Optional[datetime], metadata: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"amount": amount_text(amount)}
    for name, value in (("reference", reference), ("priority", priority), ("expires_at", _time(expires_at))):
        if value is not None:
            body[name] = value
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _capture_body(amount: AmountLike, final: bool, overage: Optional[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"amount": amount_text(amount), "final": final}
    if overage is not None:
        body["overage"] = overage
    return body


def _estimate_body(steps: Sequence[str], model: Optional[str], difficulty: Optional[str],
                   explanation_mode: str) -> dict[str, Any]:
    body: dict[str, Any] = {"steps": list(steps), "explanation_mode": explanation_mode}
    if model is not None:
        body["model"] = model
    if difficulty is not None:
        body["difficulty"] = difficulty
    return body


def _solve_body(account_id: str, problem: str, thread_id: Optional[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"account_id": account_id, "problem": problem}
    if thread_id is not None:
        body["thread_id"] = thread_id
    return body


def _event(sse: SseEvent) -> RunEvent:
    try:
        return RunEvent.model_validate(json.loads(sse.data))
    except ValueError as error:
        raise ProtocolError(f"a run event that does not parse: {error}", status=200,
                            content_type="text/event-stream") from None


def _stream_error(response: httpx.Response, body: bytes) -> Exception:
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("application/problem+json"):
        try:
            problem = json.loads(body)
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            return error_for(problem, response.status_code)
    return ProtocolError("a run stream that did not start", status=response.status_code, content_type=content_type)


class Client:
    """A synchronous client. `base_url` is the server (`http://127.0.0.1:8080`), `token` a
    bearer token (service for holds and runs, admin for grants). Connections are reused; close
    it (or use it as a context manager) when done."""

    def __init__(self, base_url: str, token: Optional[str] = None, *, timeout: httpx.Timeout = TIMEOUT,
                 transport: Optional[httpx.BaseTransport] = None) -> None:
        self._token = token
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, call: _http.Call) -> Any:
        for attempt in range(_http.ATTEMPTS_MAX):
            last = attempt == _http.ATTEMPTS_MAX - 1
            try:
                response = self._http.request(call.method, call.path, json=call.body, params=call.params,
                                              headers=call.request_headers(self._token))
            except httpx.TransportError as error:
                if last or not _http.is_retryable(error, None):
                    raise
                time.sleep(_http.backoff_seconds(attempt))
                continue
            if not last and _http.is_retryable(None, response.status_code):
                time.sleep(_http.backoff_seconds(attempt))
                continue
            return _http.decode(response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _paged(self, path: str, field: str, params: Mapping[str, str], page_size: int) -> Iterator[Any]:
        """Every item of a list route, following `next` page by page as it is iterated."""
        after: Optional[str] = None
        while True:
            query = {**params, "limit": str(page_size)}
            if after is not None:
                query["after"] = after
            page = self._call(_http.Call("GET", path, params=query))
            yield from page[field]
            after = page.get("next")
            if after is None:
                return

    # Accounts and grants.

    def account(self, account_id: str) -> Account:
        return Account.model_validate(self._call(_http.Call("GET", f"/v1/accounts/{_segment(account_id)}")))

    def grant(self, account_id: str, amount: AmountLike, *, reference: Optional[str] = None,
              priority: Optional[int] = None, expires_at: Optional[datetime] = None,
              metadata: Optional[Mapping[str, Any]] = None, idempotency_key: Optional[str] = None) -> Grant:
        """Add credits (admin token). A `reference` makes the grant once per account."""
        body = _grant_body(amount, reference, priority, expires_at, metadata)
        call = _http.mutation(f"/v1/accounts/{_segment(account_id)}/grants", body, idempotency_key)
        return Grant.model_validate(self._call(call))

    def debit(self, account_id: str, amount: AmountLike, *, reference: Optional[str] = None,
              idempotency_key: Optional[str] = None) -> Debit:
        body: dict[str, Any] = {"amount": amount_text(amount)}
        if reference is not None:
            body["reference"] = reference
        call = _http.mutation(f"/v1/accounts/{_segment(account_id)}/debits", body, idempotency_key)
        return Debit.model_validate(self._call(call))

    def entries(self, account_id: str, *, kind: Optional[str] = None, page_size: int = PAGE_SIZE) -> Iterator[Entry]:
        """The account's journal, oldest first, read page by page as it is iterated."""
        params = {} if kind is None else {"kind": kind}
        path = f"/v1/accounts/{_segment(account_id)}/entries"
        yield from (Entry.model_validate(item) for item in self._paged(path, "entries", params, page_size))

    def accounts(self, prefix: str = "", *, page_size: int = PAGE_SIZE) -> Iterator[Account]:
        """Accounts whose id starts with `prefix`, in id order, page by page (admin token)."""
        params = {"prefix": prefix}
        yield from (Account.model_validate(item) for item in self._paged("/v1/accounts", "accounts", params, page_size))

    def grants(self, account_id: str, *, state: GrantState = "active", page_size: int = PAGE_SIZE) -> Iterator[Grant]:
        """The account's grants in one state, in id order, page by page."""
        path = f"/v1/accounts/{_segment(account_id)}/grants"
        yield from (Grant.model_validate(item) for item in self._paged(path, "grants", {"state": state}, page_size))

    def void_grant(self, grant_id: str, *, idempotency_key: Optional[str] = None) -> VoidedGrant:
        """Take back what is left of a mistaken grant (admin token); `GrantCreditsHeld` while
        pending holds reserve any of it."""
        call = _http.mutation(f"/v1/grants/{_segment(grant_id)}/void", {}, idempotency_key)
        return VoidedGrant.model_validate(self._call(call))

    def holds(self, account_id: str, *, state: HoldState = "pending", page_size: int = PAGE_SIZE) -> Iterator[Hold]:
        """The account's holds in one state, page by page as it is iterated."""
        path = f"/v1/accounts/{_segment(account_id)}/holds"
        yield from (Hold.model_validate(item) for item in self._paged(path, "holds", {"state": state}, page_size))

    def create_hold(self, account_id: str, amount: AmountLike, *, ttl_seconds: Optional[int] = None,
                    reference: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None,
                    idempotency_key: Optional[str] = None) -> Hold:
        """Reserve `amount` (raises `InsufficientCredits` when the account cannot cover it)."""
        body = _hold_body(account_id, amount, ttl_seconds, reference, metadata)
        return Hold.model_validate(self._call(_http.mutation("/v1/holds", body, idempotency_key)))

    def get_hold(self, hold_id: str) -> Hold:
        return Hold.model_validate(self._call(_http.Call("GET", f"/v1/holds/{_segment(hold_id)}")))

    def capture(self, hold_id: str, amount: AmountLike, *, final: bool = True, overage: Optional[str] = None,
                idempotency_key: Optional[str] = None) -> Hold:
        call = _http.mutation(f"/v1/holds/{_segment(hold_id)}/capture", _capture_body(amount, final, overage),
                              idempotency_key)
        return Hold.model_validate(self._call(call))

    def release(self, hold_id: str, *, idempotency_key: Optional[str] = None) -> Hold:
        call = _http.mutation(f"/v1/holds/{_segment(hold_id)}/release", {}, idempotency_key)
        return Hold.model_validate(self._call(call))

    def extend(self, hold_id: str, ttl_seconds: int, *, idempotency_key: Optional[str] = None) -> Hold:
        call = _http.mutation(f"/v1/holds/{_segment(hold_id)}/extend", {"ttl_seconds": ttl_seconds}, idempotency_key)
        return Hold.model_validate(self._call(call))

    def hold(self, account_id: str, amount: AmountLike, *, reference: Optional[str] = None,
             ttl_seconds: int = HOLD_TTL_SECONDS, metadata: Optional[Mapping[str, Any]] = None,
             idempotency_key: Optional[str] = None) -> HoldContext:
        """A hold for a `with` block: taken on entry, extended while the block runs, released on
        an exception or when the block did not capture; `h.capture(amount)` / `h.settle(actual)`
        inside it charge the real cost."""
        return HoldContext(self, account_id, amount, reference=reference, ttl_seconds=ttl_seconds,
                           metadata=metadata, key=idempotency_key)

    # Runs and jobs.

    def estimate(self, steps: Sequence[str], *, model: Optional[str] = None, difficulty: Optional[str] = None,
                 explanation_mode: str = "full") -> Estimate:
        body = _estimate_body(steps, model, difficulty, explanation_mode)
        return Estimate.model_validate(self._call(_http.Call("POST", "/v1/estimate", body=body)))

    def run(self, run_id: str) -> Run:
        return Run.model_validate(self._call(_http.Call("GET", f"/v1/runs/{_segment(run_id)}")))

    def job(self, job_id: str, account_id: str) -> Job:
        call = _http.Call("GET", f"/v1/jobs/{_segment(job_id)}", params={"account_id": account_id})
        return Job.model_validate(self._call(call))

    def solve(self, account_id: str, problem: str, *, thread_id: Optional[str] = None,
              idempotency_key: Optional[str] = None) -> Iterator[RunEvent]:
        """Start a metered run and yield its events as they come (`credit_reserved`, tokens,
        `credit_settled`, then `done` or `error`). A dropped stream is resumed with
        `Last-Event-ID` (on any instance); one that cannot be raises `StreamInterrupted`."""
        key = idempotency_key if idempotency_key is not None else _http.new_key()
        headers = _http.Call("POST", "/v1/solve", key=key).request_headers(self._token)
        headers["Accept"] = "text/event-stream"
        run_id: Optional[str] = None
        last_id: Optional[str] = None
        try:
            with self._http.stream("POST", "/v1/solve", json=_solve_body(account_id, problem, thread_id),
                                   headers=headers) as response:
                if response.status_code != 200:
                    raise _stream_error(response, response.read())
                run_id = response.headers.get("x-run-id")
                for sse in events(response.iter_lines()):
                    event = _event(sse)
                    last_id = event.id
                    yield event
                    if event.is_final:
                        return
        except httpx.TransportError:
            pass
        if run_id is None:
            raise StreamInterrupted("the run's stream broke before it named its run", run_id=None, last_event_id=None)
        yield from self.resume(run_id, last_id)

    def resume(self, run_id: str, last_event_id: Optional[str] = None) -> Iterator[RunEvent]:
        """The run's events after `last_event_id` (all with `None`), to its end."""
        for _ in range(RESUMES_MAX):
            headers = _http.Call("GET", "").request_headers(self._token)
            headers["Accept"] = "text/event-stream"
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                with self._http.stream("GET", f"/v1/runs/{_segment(run_id)}/events", headers=headers) as response:
                    if response.status_code != 200:
                        raise _stream_error(response, response.read())
                    for sse in events(response.iter_lines()):
                        event = _event(sse)
                        last_event_id = event.id
                        yield event
                        if event.is_final:
                            return
            except httpx.TransportError:
                continue
        raise StreamInterrupted("the run's stream ended without done or error", run_id=run_id,
                                last_event_id=last_event_id)


class AsyncClient:
    """The asynchronous twin of `Client` (same methods, awaited; `solve` and the list calls are
    async iterators; `hold` is an `async with`)."""

    def __init__(self, base_url: str, token: Optional[str] = None, *, timeout: httpx.Timeout = TIMEOUT,
                 transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        self._token = token
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, call: _http.Call) -> Any:
        for attempt in range(_http.ATTEMPTS_MAX):
            last = attempt == _http.ATTEMPTS_MAX - 1
            try:
                response = await self._http.request(call.method, call.path, json=call.body, params=call.params,
                                                    headers=call.request_headers(self._token))
            except httpx.TransportError as error:
                if last or not _http.is_retryable(error, None):
                    raise
                await asyncio.sleep(_http.backoff_seconds(attempt))
                continue
            if not last and _http.is_retryable(None, response.status_code):
                await asyncio.sleep(_http.backoff_seconds(attempt))
                continue
            return _http.decode(response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def account(self, account_id: str) -> Account:
        return Account.model_validate(await self._call(_http.Call("GET", f"/v1/accounts/{_segment(account_id)}")))

    async def grant(self, account_id: str, amount: AmountLike, *, reference: Optional[str] = None,
                    priority: Optional[int] = None, expires_at: Optional[datetime] = None,
                    metadata: Optional[Mapping[str, Any]] = None, idempotency_key: Optional[str] = None) -> Grant:
        body = _grant_body(amount, reference, priority, expires_at, metadata)
        call = _http.mutation(f"/v1/accounts/{_segment(account_id)}/grants", body, idempotency_key)
        return Grant.model_validate(await self._call(call))

    async def entries(self, account_id: str, *, kind: Optional[str] = None,
                      page_size: int = PAGE_SIZE) -> AsyncIterator[Entry]:
        after: Optional[str] = None
        while True:
            params = {"limit": str(page_size)}
            if kind is not None:
                params["kind"] = kind
            if after is not None:
                params["after"] = after
            page = await self._call(_http.Call("GET", f"/v1/accounts/{_segment(account_id)}/entries", params=params))
            for entry in page["entries"]:
                yield Entry.model_validate(entry)
            after = page.get("next")
            if after is None:
                return

    async def create_hold(self, account_id: str, amount: AmountLike, *, ttl_seconds: Optional[int] = None,
                          reference: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None,
                          idempotency_key: Optional[str] = None) -> Hold:
        body = _hold_body(account_id, amount, ttl_seconds, reference, metadata)
        return Hold.model_validate(await self._call(_http.mutation("/v1/holds", body, idempotency_key)))

    async def get_hold(self, hold_id: str) -> Hold:
        return Hold.model_validate(await self._call(_http.Call("GET", f"/v1/holds/{_segment(hold_id)}")))

    async def capture(self, hold_id: str, amount: AmountLike, *, final: bool = True, overage: Optional[str] = None,
                      idempotency_key: Optional[str] = None) -> Hold:
        call = _http.mutation(f"/v1/holds/{_segment(hold_id)}/capture", _capture_body(amount, final, overage),
                              idempotency_key)
        return Hold.model_validate(await self._call(call))

    async def release(self, hold_id: str, *, idempotency_key: Optional[str] = None) -> Hold:
        call = _http.mutation(f"/v1/holds/{_segment(hold_id)}/release", {}, idempotency_key)
        return Hold.model_validate(await self._call(call))

    async def extend(self, hold_id: str, ttl_seconds: int, *, idempotency_key: Optional[str] = None) -> Hold:
        call = _http.mutation(f"/v1/holds/{_segment(hold_id)}/extend", {"ttl_seconds": ttl_seconds}, idempotency_key)
        return Hold.model_validate(await self._call(call))

    def hold(self, account_id: str, amount: AmountLike, *, reference: Optional[str] = None,
             ttl_seconds: int = HOLD_TTL_SECONDS, metadata: Optional[Mapping[str, Any]] = None,
             idempotency_key: Optional[str] = None) -> AsyncHoldContext:
        """See `Client.hold`; a cancelled task inside the block releases the hold too."""
        return AsyncHoldContext(self, account_id, amount, reference=reference, ttl_seconds=ttl_seconds,
                                metadata=metadata, key=idempotency_key)

    async def estimate(self, steps: Sequence[str], *, model: Optional[str] = None, difficulty: Optional[str] = None,
                       explanation_mode: str = "full") -> Estimate:
        body = _estimate_body(steps, model, difficulty, explanation_mode)
        return Estimate.model_validate(await self._call(_http.Call("POST", "/v1/estimate", body=body)))

    async def run(self, run_id: str) -> Run:
        return Run.model_validate(await self._call(_http.Call("GET", f"/v1/runs/{_segment(run_id)}")))

    async def job(self, job_id: str, account_id: str) -> Job:
        call = _http.Call("GET", f"/v1/jobs/{_segment(job_id)}", params={"account_id": account_id})
        return Job.model_validate(await self._call(call))

    async def solve(self, account_id: str, problem: str, *, thread_id: Optional[str] = None,
                    idempotency_key: Optional[str] = None) -> AsyncIterator[RunEvent]:
        key = idempotency_key if idempotency_key is not None else _http.new_key()
        headers = _http.Call("POST", "/v1/solve", key=key).request_headers(self._token)
        headers["Accept"] = "text/event-stream"
        run_id: Optional[str] = None
        last_id: Optional[str] = None
        try:
            async with self._http.stream("POST", "/v1/solve", json=_solve_body(account_id, problem, thread_id),
                                         headers=headers) as response:
                if response.status_code != 200:
                    raise _stream_error(response, await response.aread())
                run_id = response.headers.get("x-run-id")
                async for sse in aevents(response.aiter_lines()):
                    event = _event(sse)
                    last_id = event.id
                    yield event
                    if event.is_final:
                        return
        except httpx.TransportError:
            pass
        if run_id is None:
            raise StreamInterrupted("the run's stream broke before it named its run", run_id=None, last_event_id=None)
        async for event in self.resume(run_id, last_id):
            yield event

    async def resume(self, run_id: str, last_event_id: Optional[str] = None) -> AsyncIterator[RunEvent]:
        for _ in range(RESUMES_MAX):
            headers = _http.Call("GET", "").request_headers(self._token)
            headers["Accept"] = "text/event-stream"
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                async with self._http.stream("GET", f"/v1/runs/{_segment(run_id)}/events",
                                             headers=headers) as response:
                    if response.status_code != 200:
                        raise _stream_error(response, await response.aread())
                    async for sse in aevents(response.aiter_lines()):
                        event = _event(sse)
                        last_event_id = event.id
                        yield event
                        if event.is_final:
                            return
            except httpx.TransportError:
                continue
        raise StreamInterrupted("the run's stream ended without done or error", run_id=run_id,
                                last_event_id=last_event_id)
