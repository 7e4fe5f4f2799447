"""A scripted OpenAI-compatible chat provider (a test double for the LLM provider, the one part
outside creditgraph): the router always routes to general chat, general chat answers "4", each
with fixed token usage. Prints its port, then serves until killed."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(body: dict) -> dict:
    system = body["messages"][0]["content"] if body.get("messages") else ""
    if "[creditgraph:router]" in system:
        content = json.dumps({"route": "general_chat"})
    else:
        content = "2 + 2 = 4"
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "scripted"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45},
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        # A provider may ignore `stream: true` and answer one JSON completion: the engine takes it whole.
        data = json.dumps(answer(body)).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
