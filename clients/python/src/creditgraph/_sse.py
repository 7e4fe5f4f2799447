"""Server-sent events, as the server writes them: `event:`, `id:` and `data:` lines, a blank line
ending each event, `:` comments (heartbeats) ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator, Optional


@dataclass
class SseEvent:
    event: str
    id: Optional[str]
    data: str


class _Parser:
    def __init__(self) -> None:
        self.event = "message"
        self.id: Optional[str] = None
        self.data: list[str] = []

    def feed(self, line: str) -> Optional[SseEvent]:
        if line == "":
            if not self.data:
                self.event = "message"
                return None
            done = SseEvent(self.event, self.id, "\n".join(self.data))
            self.event, self.id, self.data = "message", None, []
            return done
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "id":
            self.id = value
        elif name == "data":
            self.data.append(value)
        return None


def events(lines: Iterable[str]) -> Iterator[SseEvent]:
    parser = _Parser()
    for line in lines:
        event = parser.feed(line.rstrip("\r"))
        if event is not None:
            yield event


async def aevents(lines: AsyncIterable[str]) -> AsyncIterator[SseEvent]:
    parser = _Parser()
    async for line in lines:
        event = parser.feed(line.rstrip("\r"))
        if event is not None:
            yield event
