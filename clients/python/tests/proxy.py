"""A TCP proxy in front of the real server that loses answers on purpose: the network failure a
retrying client must survive (the server itself is untouched)."""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional, Union


class DroppingProxy:
    """Relays connections to `target`. For a request whose first line matches `drop`, the
    request reaches the server but the client gets only the answer's first `keep_bytes` bytes
    (a number, or one chosen from the request line), then the connection is cut; `times` such
    cuts, then everything passes."""

    def __init__(self, target: str, drop: Callable[[str], bool], *,
                 keep_bytes: Union[int, Callable[[str], int]] = 0, times: int = 1) -> None:
        host, port = target.replace("http://", "").split(":")
        self.target = (host, int(port))
        self.drop = drop
        self.keep_bytes = keep_bytes
        self.times = times
        self.cut = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _should_cut(self, head: bytes) -> Optional[int]:
        """How many bytes of this request's answer pass, or `None`: all of them."""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        with self._lock:
            if self.cut < self.times and self.drop(line):
                self.cut += 1
                return self.keep_bytes(line) if callable(self.keep_bytes) else self.keep_bytes
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        # Judged on the first request of the connection; None: not cut.
        keep: Optional[int] = None
        judged = threading.Event()

        def to_upstream() -> None:
            nonlocal keep
            try:
                while data := client.recv(65536):
                    if not judged.is_set():
                        keep = self._should_cut(data)
                        judged.set()
                    upstream.sendall(data)
            except OSError:
                pass
            judged.set()

        threading.Thread(target=to_upstream, daemon=True).start()
        relayed = 0
        try:
            # A cut answer is cut after it began: the request was applied, only its answer lost.
            while data := upstream.recv(65536):
                judged.wait()
                if keep is not None:
                    room = keep - relayed
                    if room <= 0:
                        break
                    data = data[:room]
                client.sendall(data)
                relayed += len(data)
                if keep is not None and relayed >= keep:
                    break
        except OSError:
            pass
        finally:
            for side in (client, upstream):
                try:
                    side.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                side.close()
