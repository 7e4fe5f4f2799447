"""A throw-away `creditgraph serve` for tests (a pytest plugin: the `creditgraph_server` fixture).

The binary is `$CREDITGRAPH_BIN`, else `creditgraph` on the `PATH`; the store is a temporary
SQLite file unless a database URL is given; tokens are fresh for every server."""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Iterator, Optional, Sequence

import pytest

from ._client import AsyncClient, Client

#: How long a server may take to say it listens.
START_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class CreditgraphServer:
    """A running `creditgraph serve`: its `base_url` and an admin and a service token."""

    base_url: str
    admin_token: str
    service_token: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    def client(self, *, admin: bool = False) -> Client:
        return Client(self.base_url, self.admin_token if admin else self.service_token)

    def async_client(self, *, admin: bool = False) -> AsyncClient:
        return AsyncClient(self.base_url, self.admin_token if admin else self.service_token)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ServerStart:
    """`with ServerStart(...) as server:` — started on entry, stopped on exit."""

    def __init__(self, *, binary: Optional[str] = None, database: Optional[str] = None,
                 args: Sequence[str] = (), env: Optional[dict[str, str]] = None) -> None:
        self.binary = binary or os.environ.get("CREDITGRAPH_BIN") or shutil.which("creditgraph")
        if self.binary is None:
            raise RuntimeError("no creditgraph binary: set CREDITGRAPH_BIN or put creditgraph on the PATH")
        self.database = database
        self.args = list(args)
        self.env = env
        self._directory: Optional[tempfile.TemporaryDirectory[str]] = None
        self.server: Optional[CreditgraphServer] = None

    def __enter__(self) -> CreditgraphServer:
        database = self.database
        if database is None:
            self._directory = tempfile.TemporaryDirectory(prefix="creditgraph-test-")
            database = f"sqlite:{os.path.join(self._directory.name, 'ledger.db')}"
        admin, service = secrets.token_hex(16), secrets.token_hex(16)
        listen = f"127.0.0.1:{_free_port()}"
        environment = dict(os.environ if self.env is None else self.env)
        for variable in ("CREDITGRAPH_TOKENS", "CREDITGRAPH_DATABASE", "CREDITGRAPH_LISTEN"):
            environment.pop(variable, None)
        assert self.binary is not None
        process = subprocess.Popen(
            [self.binary, "serve", "--listen", listen, "--database", database,
             "--tokens", f"admin:{admin},service:{service}", *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment,
        )
        server = CreditgraphServer(f"http://{listen}", admin, service, process)
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                server.log.append(line.rstrip("\n"))
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=START_SECONDS)
            except queue.Empty:
                server.stop()
                raise RuntimeError(f"creditgraph did not start in {START_SECONDS} s: {server.log}") from None
            if line is None:
                raise RuntimeError(f"creditgraph exited at start: {server.log}")
            if "creditgraph listening" in line:
                break
        self.server = server
        return server

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        if self.server is not None:
            self.server.stop()
        if self._directory is not None:
            self._directory.cleanup()


@pytest.fixture
def creditgraph_server() -> Iterator[CreditgraphServer]:
    """A `creditgraph serve` on a fresh SQLite file, for one test."""
    with ServerStart() as server:
        yield server
