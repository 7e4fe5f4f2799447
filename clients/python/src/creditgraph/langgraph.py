"""Metering a LangGraph graph: the run's budget held before the graph runs, each node charged
from a price table as it finishes (a node that would go past the budget is not run), the real
cost captured after, the rest released; an exception in the graph releases everything.

    meter = Meter(client, "alice", budget="5", prices={"plan": "1", "answer": "2"})
    graph.add_node("plan", meter.node("plan", plan))
    result = meter.invoke(graph.compile(), {"question": "2 + 2?"})
    meter.log   # [Charge(node="plan", cost=Decimal("1")), ...]
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping, Optional, Protocol, TypeVar

from ._amounts import AmountLike, amount_text
from ._client import AsyncClient, Client
from .errors import CreditgraphError

State = TypeVar("State")
Update = TypeVar("Update")


class BudgetExceeded(CreditgraphError):
    """A node would take the run past its budget: it was not run (nothing was charged for it)."""

    def __init__(self, node: str, cost: Decimal, spent: Decimal, budget: Decimal) -> None:
        super().__init__(f"node {node} costs {cost}; {spent} of the budget {budget} is spent")
        self.node, self.cost, self.spent, self.budget = node, cost, spent, budget


@dataclass(frozen=True)
class Charge:
    """One metered node: its name and what it cost."""

    node: str
    cost: Decimal


class _Invocable(Protocol):
    def invoke(self, input: Any, config: Any = None) -> Any: ...


class _AsyncInvocable(Protocol):
    async def ainvoke(self, input: Any, config: Any = None) -> Any: ...


class Meter:
    """Meters graph runs of one account against one budget per run (see the module docs)."""

    def __init__(self, client: Client | AsyncClient, account_id: str, *, budget: AmountLike,
                 prices: Mapping[str, AmountLike], reference: Optional[str] = None) -> None:
        self.client = client
        self.account_id = account_id
        self.budget = Decimal(amount_text(budget, "budget"))
        self.prices = {node: Decimal(amount_text(price, f"prices[{node}]")) for node, price in prices.items()}
        self.reference = reference
        #: The current (or last) run's charges, in the order the nodes finished.
        self.log: list[Charge] = []
        self._lock = threading.Lock()

    @property
    def total(self) -> Decimal:
        return sum((charge.cost for charge in self.log), Decimal(0))

    def _charge(self, node: str) -> Decimal:
        cost = self.prices.get(node)
        if cost is None:
            raise KeyError(f"no price for node {node!r}")
        with self._lock:
            if self.total + cost > self.budget:
                raise BudgetExceeded(node, cost, self.total, self.budget)
            self.log.append(Charge(node, cost))
        return cost

    def node(self, name: str, function: Callable[[State], Update]) -> Callable[[State], Update]:
        """`function` as a metered node: charged `prices[name]` when it returns (checked against
        the budget before it runs)."""

        @functools.wraps(function)
        def metered(state: State) -> Update:
            cost = self.prices.get(name)
            if cost is not None and self.total + cost > self.budget:
                raise BudgetExceeded(name, cost, self.total, self.budget)
            update = function(state)
            self._charge(name)
            return update

        return metered

    def invoke(self, graph: _Invocable, input: Any, config: Any = None) -> Any:
        """Runs `graph` inside a hold of the budget; captures what its nodes cost."""
        if not isinstance(self.client, Client):
            raise TypeError("invoke needs a Client; use ainvoke with an AsyncClient")
        self.log = []
        with self.client.hold(self.account_id, self.budget, reference=self.reference) as hold:
            result = graph.invoke(input, config)
            hold.settle(self.total)
        return result

    async def ainvoke(self, graph: _AsyncInvocable, input: Any, config: Any = None) -> Any:
        """`invoke` for an `AsyncClient` and a graph run with `ainvoke`."""
        if not isinstance(self.client, AsyncClient):
            raise TypeError("ainvoke needs an AsyncClient; use invoke with a Client")
        self.log = []
        async with self.client.hold(self.account_id, self.budget, reference=self.reference) as hold:
            result = await graph.ainvoke(input, config)
            await hold.settle(self.total)
        return result
