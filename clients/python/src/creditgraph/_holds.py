"""Holds as context managers: the reservation made before the work, settled or released after it
on every path. On a normal exit what the block captured stands and the rest is released; on an
exception (or an asyncio cancellation) the hold is released, shielded from the cancellation;
while the block runs the hold is extended before its TTL. A release that fails is raised."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ._amounts import AmountLike
from .errors import CreditgraphError, HoldNotPending, HoldReleaseFailed
from .models import Hold

if TYPE_CHECKING:
    from ._client import AsyncClient, Client

#: Extend when this share of the TTL has passed (so a slow extend still lands in time).
EXTEND_AT_SHARE = 0.5


class _HoldState:
    """What both context managers track: the hold as last known, and whether it still needs
    settling."""

    def __init__(self, account_id: str, amount: AmountLike, reference: Optional[str], ttl_seconds: int,
                 metadata: Optional[Mapping[str, Any]], key: Optional[str]) -> None:
        if ttl_seconds < 2:
            raise ValueError("ttl_seconds: at least 2, so the hold can be extended in time")
        self.account_id = account_id
        self.amount = amount
        self.reference = reference
        self.ttl_seconds = ttl_seconds
        self.metadata = metadata
        self.key = key
        self._hold: Optional[Hold] = None

    @property
    def hold(self) -> Hold:
        if self._hold is None:
            raise CreditgraphError("the hold is taken when the `with` block is entered")
        return self._hold

    @property
    def hold_id(self) -> str:
        return self.hold.hold_id

    @property
    def pending(self) -> bool:
        return self._hold is not None and self._hold.state == "pending"

    @property
    def captured(self) -> Decimal:
        return self.hold.captured


class HoldContext(_HoldState):
    """`with client.hold(account, amount) as h:` — see the module's documentation."""

    def __init__(self, client: "Client", account_id: str, amount: AmountLike, *, reference: Optional[str],
                 ttl_seconds: int, metadata: Optional[Mapping[str, Any]], key: Optional[str]) -> None:
        super().__init__(account_id, amount, reference, ttl_seconds, metadata, key)
        self._client = client
        self._stop = threading.Event()
        self._extender: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        #: Set each time the hold was extended (what a caller or a test can wait for).
        self.extended = threading.Event()
        #: The extender's last failure (the hold may then expire before the block ends).
        self.extend_error: Optional[BaseException] = None

    def __enter__(self) -> "HoldContext":
        self._hold = self._client.create_hold(
            self.account_id, self.amount, ttl_seconds=self.ttl_seconds, reference=self.reference,
            metadata=self.metadata, idempotency_key=self.key,
        )
        self._extender = threading.Thread(target=self._extend_loop, name=f"extend-{self.hold_id}", daemon=True)
        self._extender.start()
        return self

    def _extend_loop(self) -> None:
        interval = self.ttl_seconds * EXTEND_AT_SHARE
        # Event.wait returns early when the block ends: no extension after it.
        while not self._stop.wait(interval):
            with self._lock:
                if not self.pending:
                    return
                try:
                    self._hold = self._client.extend(self.hold_id, self.ttl_seconds)
                    self.extended.set()
                except HoldNotPending:
                    return
                except CreditgraphError as error:
                    self.extend_error = error

    def capture(self, amount: AmountLike, *, final: bool = True) -> Hold:
        """Charge `amount` from the hold now; `final` (the default) releases the rest."""
        with self._lock:
            self._hold = self._client.capture(self.hold_id, amount, final=final)
            return self._hold

    def settle(self, actual: AmountLike) -> Hold:
        """The real cost: captured, the rest released."""
        return self.capture(actual, final=True)

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self._stop.set()
        if self._extender is not None:
            self._extender.join()
        if not self.pending:
            return
        try:
            self._hold = self._client.release(self.hold_id)
        except HoldNotPending:
            return
        except CreditgraphError as release_error:
            raise HoldReleaseFailed(self.hold_id, release_error) from (error or release_error)


class AsyncHoldContext(_HoldState):
    """`async with client.hold(account, amount) as h:` — see the module's documentation."""

    def __init__(self, client: "AsyncClient", account_id: str, amount: AmountLike, *, reference: Optional[str],
                 ttl_seconds: int, metadata: Optional[Mapping[str, Any]], key: Optional[str]) -> None:
        super().__init__(account_id, amount, reference, ttl_seconds, metadata, key)
        self._client = client
        self._extender: Optional[asyncio.Task[None]] = None
        self._lock = asyncio.Lock()
        #: Set each time the hold was extended.
        self.extended = asyncio.Event()
        #: The extender's last failure (the hold may then expire before the block ends).
        self.extend_error: Optional[BaseException] = None

    async def __aenter__(self) -> "AsyncHoldContext":
        self._hold = await self._client.create_hold(
            self.account_id, self.amount, ttl_seconds=self.ttl_seconds, reference=self.reference,
            metadata=self.metadata, idempotency_key=self.key,
        )
        self._extender = asyncio.create_task(self._extend_loop(), name=f"extend-{self.hold_id}")
        return self

    async def _extend_loop(self) -> None:
        interval = self.ttl_seconds * EXTEND_AT_SHARE
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                if not self.pending:
                    return
                try:
                    self._hold = await self._client.extend(self.hold_id, self.ttl_seconds)
                    self.extended.set()
                except HoldNotPending:
                    return
                except CreditgraphError as error:
                    self.extend_error = error

    async def capture(self, amount: AmountLike, *, final: bool = True) -> Hold:
        """Charge `amount` from the hold now; `final` (the default) releases the rest."""
        async with self._lock:
            self._hold = await self._client.capture(self.hold_id, amount, final=final)
            return self._hold

    async def settle(self, actual: AmountLike) -> Hold:
        """The real cost: captured, the rest released."""
        return await self.capture(actual, final=True)

    async def _release(self) -> None:
        if not self.pending:
            return
        try:
            self._hold = await self._client.release(self.hold_id)
        except HoldNotPending:
            return

    async def __aexit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                        traceback: Optional[TracebackType]) -> None:
        if self._extender is not None:
            self._extender.cancel()
            await asyncio.gather(self._extender, return_exceptions=True)
        # Shielded: a cancellation of the task that leaves this block (the usual way a caller
        # gives up) must not cancel the release too. Cancelled again while it runs, the release
        # still finishes before the cancellation goes on.
        release = asyncio.ensure_future(self._release())
        cancelled: Optional[BaseException] = None
        while not release.done():
            try:
                await asyncio.shield(release)
            except asyncio.CancelledError as again:
                cancelled = again
        release_error = release.exception()
        if release_error is not None:
            raise HoldReleaseFailed(self.hold_id, release_error) from (error or release_error)
        if cancelled is not None and error is None:
            raise cancelled
