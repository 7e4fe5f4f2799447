"""What the sync and async clients share: building requests, the retry rule, decoding answers."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import httpx

from .errors import ProtocolError, error_for

#: Attempts of one request in all (the first and the retries).
ATTEMPTS_MAX = 4
#: The first retry's delay; doubled per retry, capped, each with full jitter.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0

USER_AGENT = "creditgraph-python/0.1.0"


def new_key() -> str:
    """A fresh idempotency key (a UUIDv4: unguessable and unique)."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Call:
    """One API call: a mutation always carries an `Idempotency-Key`, so a retry after a lost
    answer replays the first result instead of applying twice."""

    method: str
    path: str
    body: Optional[Mapping[str, Any]] = None
    params: Optional[Mapping[str, str]] = None
    key: Optional[str] = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def request_headers(self, token: Optional[str]) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/problem+json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if self.key is not None:
            headers["Idempotency-Key"] = self.key
        headers.update(self.headers)
        return headers


def mutation(path: str, body: Mapping[str, Any], key: Optional[str]) -> Call:
    """A POST that is safe to retry: the caller's key, or a new one kept for every attempt."""
    return Call("POST", path, body=body, key=key if key is not None else new_key())


def is_retryable(error: Optional[BaseException], status: Optional[int]) -> bool:
    """A connection that failed or dropped, a timeout, or a 503 (the server or its store could
    not take the request now). Every call is retried with the same key, so nothing applies twice."""
    if error is not None:
        return isinstance(error, (httpx.TransportError,))
    return status == 503


def backoff_seconds(attempt: int) -> float:
    """Full jitter over an exponential ceiling: retries of many clients do not line up."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * (2 ** attempt))
    return random.uniform(0, ceiling)


def decode(response: httpx.Response) -> Any:
    """The JSON of a success; the typed exception of a problem; `ProtocolError` for anything
    else (the status and content type named)."""
    content_type = response.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media not in ("application/json", "application/problem+json"):
        raise ProtocolError("the server did not answer JSON", status=response.status_code, content_type=content_type)
    try:
        body = json.loads(response.content)
    except ValueError:
        raise ProtocolError("the server's JSON does not parse", status=response.status_code, content_type=content_type) from None
    if response.status_code >= 400:
        if media != "application/problem+json" or not isinstance(body, dict):
            raise ProtocolError("an error without a problem body", status=response.status_code, content_type=content_type)
        raise error_for(body, response.status_code)
    return body
