"""FastAPI glue: a dependency that holds credits for a request, and exception handlers that turn
the client's errors into problem+json answers (`InsufficientCredits` → 402 with `required` and
`available`), so an endpoint can simply let them propagate.

    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/summarize")
    async def summarize(hold: AsyncHoldContext = Depends(credits(client, "2", account=from_header))):
        ...
        await hold.settle("1.5")
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ._amounts import AmountLike
from ._client import AsyncClient
from ._holds import AsyncHoldContext
from .errors import ApiError

PROBLEM_JSON = "application/problem+json"


def problem_response(error: ApiError) -> JSONResponse:
    """The server's problem, passed on as it came (status, code, detail, the extension members)."""
    return JSONResponse(status_code=error.status, content=error.problem, media_type=PROBLEM_JSON)


async def _handle(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return problem_response(error)


def install_problem_handlers(app: FastAPI) -> None:
    """Every `ApiError` an endpoint (or a dependency) raises becomes its problem+json answer."""
    app.add_exception_handler(ApiError, _handle)


def credits(client: AsyncClient, amount: AmountLike, *,
            account: Callable[[Request], str]) -> Callable[[Request], AsyncIterator[AsyncHoldContext]]:
    """A dependency holding `amount` of the request's account (`account(request)`) while the
    endpoint runs: the endpoint settles what it really used; anything it did not capture (or an
    exception) is released. Short of credits, the request ends `402 insufficient_credits`."""

    async def dependency(request: Request) -> AsyncIterator[AsyncHoldContext]:
        async with client.hold(account(request), amount, reference=f"{request.method} {request.url.path}") as hold:
            yield hold

    return dependency
