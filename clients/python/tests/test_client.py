"""The client against the real server on both stores: typed answers, typed problems, safe
retries, holds that are settled or released on every path, and runs followed to their end."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from decimal import Decimal
from typing import Iterator

import httpx
import pytest

from conftest import new_account
from creditgraph import (
    AccountNotFound,
    GrantCreditsHeld,
    Client,
    CreditReserved,
    CreditSettled,
    Done,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientCredits,
    ProtocolError,
    StreamInterrupted,
)
from creditgraph.testing import CreditgraphServer
from proxy import DroppingProxy


def funded(server: CreditgraphServer, amount: str) -> str:
    account = new_account()
    with server.client(admin=True) as admin:
        admin.grant(account, amount)
    return account


def test_holds_capture_and_the_journal_in_exact_decimals(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    with server.client() as client:
        hold = client.create_hold(account, Decimal("4"), reference="plan-1")
        captured = client.capture(hold.hold_id, "2.5")
        assert (captured.state, captured.captured) == ("captured", Decimal("2.5"))
        figures = client.account(account)
        assert (figures.balance, figures.held, figures.available) == (Decimal("7.5"), 0, Decimal("7.5"))
        kinds = [entry.kind for entry in client.entries(account, page_size=2)]
        assert kinds == ["grant", "hold", "capture", "release"], "every page read"


def test_a_float_is_refused_before_any_request() -> None:
    def no_request(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a request was sent: {request.url}")

    client = Client("http://creditgraph.invalid", transport=httpx.MockTransport(no_request))
    with pytest.raises(TypeError, match="not float"):
        client.create_hold("a", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.capture("h", True)  # type: ignore[arg-type]


def test_problems_are_typed_exceptions_with_their_fields(server: CreditgraphServer) -> None:
    account = funded(server, "5")
    with server.client() as client:
        with pytest.raises(InsufficientCredits) as short:
            client.create_hold(account, "8")
        assert (short.value.required, short.value.available, short.value.status) == (Decimal(8), Decimal(5), 402)
        assert short.value.request_id, "the server's request id comes with the problem"
        hold = client.create_hold(account, "1")
        client.release(hold.hold_id)
        with pytest.raises(HoldNotPending) as ended:
            client.capture(hold.hold_id, "1")
        assert ended.value.state == "released"
        client.create_hold(account, "1", idempotency_key="same-key-1")
        with pytest.raises(IdempotencyConflict):
            client.create_hold(account, "2", idempotency_key="same-key-1")
        with pytest.raises(AccountNotFound):
            client.account(new_account())


@pytest.fixture
def html_server() -> Iterator[str]:
    """Something that answers an HTML error page, as a misconfigured proxy would."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(502)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_an_answer_that_is_not_json_is_a_protocol_error(html_server: str) -> None:
    with Client(html_server) as client, pytest.raises(ProtocolError) as error:
        client.account("alice")
    assert (error.value.status, error.value.content_type) == (502, "text/html")


def test_a_hold_retried_after_a_lost_answer_applies_once(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    proxy = DroppingProxy(server.base_url, lambda line: line.startswith("POST /v1/holds "))
    try:
        with Client(proxy.base_url, server.service_token) as client:
            hold = client.create_hold(account, "3")
        assert proxy.cut == 1, "the first answer was lost on the way"
    finally:
        proxy.close()
    with server.client() as client:
        assert client.account(account).held == Decimal(3), "one hold, not two"
        assert [h.hold_id for h in client.holds(account)] == [hold.hold_id]
    # The server answered twice (the first answer lost on the way, the retry's replayed it).
    deadline = time.monotonic() + 10
    while sum("route=/v1/holds status=201" in line for line in server.log) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the server's log is read by another thread
    assert sum("route=/v1/holds status=201" in line for line in server.log) == 2, server.log


def test_a_block_that_settles_charges_its_real_cost(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    with server.client() as client:
        with client.hold(account, "4", reference="run-1") as hold:
            hold.settle("1.25")
        assert client.get_hold(hold.hold_id).captured == Decimal("1.25")
        assert client.account(account).balance == Decimal("8.75")
        with client.hold(account, "4") as untouched:
            pass
        assert client.get_hold(untouched.hold_id).state == "released", "nothing captured: released"


def test_an_exception_releases_the_hold(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    with server.client() as client:
        with pytest.raises(RuntimeError, match="the agent broke"):
            with client.hold(account, "4") as hold:
                raise RuntimeError("the agent broke")
        assert client.get_hold(hold.hold_id).state == "released"
        assert client.account(account).available == Decimal(10)


def test_a_cancelled_task_releases_its_hold(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    held: list[str] = []

    async def scenario() -> None:
        async with server.async_client() as client:
            inside = asyncio.Event()

            async def agent() -> None:
                async with client.hold(account, "3") as hold:
                    held.append(hold.hold_id)
                    inside.set()
                    await asyncio.Event().wait()  # works until cancelled

            task = asyncio.create_task(agent())
            await inside.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await client.get_hold(held[0])).state == "released"

    asyncio.run(scenario())


def test_a_long_block_extends_its_hold(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    with server.client() as client:
        with client.hold(account, "2", ttl_seconds=2) as hold:
            first_expiry = hold.hold.expires_at
            assert hold.extended.wait(timeout=20), "extended before its TTL"
            now = client.get_hold(hold.hold_id)
            assert now.state == "pending" and now.expires_at > first_expiry
            hold.settle("1")
        assert client.get_hold(hold.hold_id).captured == Decimal(1)


def test_a_run_streams_typed_credit_events(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    with server.client() as client:
        events = list(client.solve(account, "hello"))
        assert events[-1].type == "done"
        reserved = next(e.typed_payload() for e in events if e.type == "credit_reserved")
        settled = next(e.typed_payload() for e in events if e.type == "credit_settled")
        assert isinstance(reserved, CreditReserved) and isinstance(settled, CreditSettled)
        assert isinstance(events[-1].typed_payload(), Done)
        assert client.account(account).balance == Decimal(10) - settled.captured
        assert [e.seq for e in events] == list(range(len(events)))


def test_a_dropped_run_stream_resumes_where_it_stopped(server: CreditgraphServer) -> None:
    account = funded(server, "10")
    proxy = DroppingProxy(server.base_url, lambda line: line.startswith("POST /v1/solve "), keep_bytes=600)
    try:
        with Client(proxy.base_url, server.service_token) as client:
            events = list(client.solve(account, "hello"))
    finally:
        proxy.close()
    assert proxy.cut == 1
    assert events[-1].type == "done"
    assert [e.seq for e in events] == list(range(len(events))), "no frame lost or repeated across the resume"


def test_a_stream_that_cannot_resume_raises_stream_interrupted(server: CreditgraphServer) -> None:
    account = funded(server, "10")

    def cut(line: str) -> bool:
        return line.startswith("POST /v1/solve ") or line.startswith("GET /v1/runs/")

    # The run's own stream passes its first frames; every resume is cut before its first byte.
    proxy = DroppingProxy(server.base_url, cut, keep_bytes=lambda line: 1_500 if line.startswith("POST") else 0,
                          times=1_000)
    try:
        with Client(proxy.base_url, server.service_token) as client, pytest.raises(StreamInterrupted) as interrupted:
            list(client.solve(account, "hello"))
    finally:
        proxy.close()
    assert interrupted.value.run_id is not None and interrupted.value.last_event_id is not None
    with server.client() as client:
        resumed = list(client.resume(interrupted.value.run_id, interrupted.value.last_event_id))
        assert resumed[-1].type == "done", "the run went on: resumable later from the id it named"


def test_an_estimate_is_typed_and_exact(server: CreditgraphServer) -> None:
    with server.client() as client:
        estimate = client.estimate(["solve", "pdf"], difficulty="easy", explanation_mode="full")
        assert estimate.total == sum((line.amount for line in estimate.breakdown), Decimal(0))
        assert estimate.catalog_version.startswith("sha256:")


def test_the_async_client_lists_the_journal_across_pages(server: CreditgraphServer) -> None:
    account = funded(server, "10")

    async def scenario() -> list[str]:
        async with server.async_client() as client:
            async with client.hold(account, "2") as hold:
                await hold.capture("1", final=False)
            return [entry.kind async for entry in client.entries(account, page_size=1)]

    assert asyncio.run(scenario()) == ["grant", "hold", "capture", "release"]


def test_an_operator_lists_accounts_and_voids_a_grant(server: CreditgraphServer) -> None:
    account = funded(server, "2")
    with server.client(admin=True) as admin:
        mistaken = admin.grant(account, "50", reference="typo")
        hold = admin.create_hold(account, "51")
        with pytest.raises(GrantCreditsHeld) as held:
            admin.void_grant(mistaken.grant_id)
        assert held.value.held > 0
        admin.release(hold.hold_id)
        voided = admin.void_grant(mistaken.grant_id)
        assert voided.voided == Decimal(50) and voided.grant.voided_at is not None
        assert [grant.reference for grant in admin.grants(account, state="voided")] == ["typo"]
        listed = [found.account_id for found in admin.accounts(account[:-1], page_size=1)]
        assert account in listed
        assert admin.account(account).balance == Decimal(2)
