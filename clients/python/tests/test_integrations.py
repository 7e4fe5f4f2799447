"""The README's LangGraph example run as written against the real server, FastAPI's 402, and the
pytest fixture users get."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal

from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from conftest import new_account
from creditgraph import AsyncClient, AsyncHoldContext
from creditgraph.fastapi import credits, install_problem_handlers
from creditgraph.testing import CreditgraphServer

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def readme_example() -> str:
    with open(README, encoding="utf-8") as text:
        blocks = re.findall(r"```python\n(.*?)```", text.read(), re.DOTALL)
    return next(block for block in blocks if "Meter(" in block)


def test_the_readme_langgraph_example_meters_its_graph_exactly(server: CreditgraphServer) -> None:
    account = new_account()
    with server.client(admin=True) as admin:
        admin.grant(account, "20")
    script = readme_example() + "\nprint('TOTAL', meter.total)\nprint('LOG', sum(c.cost for c in meter.log))\n"
    env = dict(os.environ, CREDITGRAPH_URL=server.base_url, CREDITGRAPH_TOKEN=server.service_token,
               CREDITGRAPH_ACCOUNT=account)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("TOTAL", "LOG")))
    assert Decimal(lines["TOTAL"]) == Decimal(lines["LOG"]) == Decimal(3), done.stdout
    with server.client() as client:
        figures = client.account(account)
        assert (figures.balance, figures.held) == (Decimal(17), Decimal(0)), "charged exactly the log"
        holds = list(client.holds(account, state="captured"))
        assert [hold.captured for hold in holds] == [Decimal(3)]


def test_a_budget_stops_the_node_that_would_pass_it(server: CreditgraphServer) -> None:
    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    from creditgraph.langgraph import BudgetExceeded, Meter

    class State(TypedDict):
        steps: int

    account = new_account()
    with server.client(admin=True) as admin:
        admin.grant(account, "20")
    with server.client() as client:
        meter = Meter(client, account, budget="3", prices={"a": "2", "b": "2"})
        graph = StateGraph(State)
        graph.add_node("a", meter.node("a", lambda state: {"steps": state["steps"] + 1}))
        graph.add_node("b", meter.node("b", lambda state: {"steps": state["steps"] + 1}))
        graph.add_edge(START, "a")
        graph.add_edge("a", "b")
        graph.add_edge("b", END)
        try:
            meter.invoke(graph.compile(), {"steps": 0})
            raise AssertionError("the second node passes the budget")
        except BudgetExceeded as exceeded:
            assert (exceeded.node, exceeded.spent) == ("b", Decimal(2))
        assert client.account(account).balance == Decimal(20), "a failed graph is released, not charged"


def test_fastapi_answers_402_when_the_account_is_short(server: CreditgraphServer) -> None:
    poor, rich = new_account(), new_account()
    with server.client(admin=True) as admin:
        admin.grant(poor, "1")
        admin.grant(rich, "10")
    client = AsyncClient(server.base_url, server.service_token)
    app = FastAPI()
    install_problem_handlers(app)

    def account(request: Request) -> str:
        return request.headers["x-account"]

    @app.post("/summarize")
    async def summarize(hold: AsyncHoldContext = Depends(credits(client, "5", account=account))) -> dict[str, str]:
        await hold.settle("2")
        return {"hold_id": hold.hold_id}

    with TestClient(app) as web:
        refused = web.post("/summarize", headers={"x-account": poor})
        assert refused.status_code == 402
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert (refused.json()["code"], refused.json()["required"]) == ("insufficient_credits", "5")
        served = web.post("/summarize", headers={"x-account": rich})
        assert served.status_code == 200, served.text
    with server.client() as sync:
        assert sync.account(rich).balance == Decimal(8)
        assert sync.account(poor).balance == Decimal(1)


def test_the_pytest_fixture_serves_a_throwaway_server(creditgraph_server: CreditgraphServer) -> None:
    with creditgraph_server.client(admin=True) as admin:
        admin.grant("fixture-user", "3")
    with creditgraph_server.client() as client:
        assert client.account("fixture-user").available == Decimal(3)
