"""A webhook receiver for creditgraph's tests, outside the service: it checks every delivery
with the official `standardwebhooks` package (from PyPI) and answers as the test tells it.

It prints its port on the first line of stdout, then serves on 127.0.0.1:
  POST /hook      a delivery: 400 when the signature does not verify, else 500 while told to
                  fail, else 200; each one is recorded
  POST /control   {"secret": "whsec_...", "fail": true|false} (either field) sets how it answers
  GET  /received  {"deliveries": [{"id", "status", "verified", "payload"}]} in arrival order
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

STATE = {"secret": None, "fail": False, "deliveries": []}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=b"{}"):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/received":
            return self.answer(404)
        with LOCK:
            body = json.dumps({"deliveries": STATE["deliveries"]}).encode()
        self.answer(200, body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/control":
            with LOCK:
                STATE.update(json.loads(body))
            return self.answer(200)
        if self.path != "/hook":
            return self.answer(404)
        headers = {name.lower(): value for name, value in self.headers.items()}
        with LOCK:
            secret, fail = STATE["secret"], STATE["fail"]
        try:
            payload = Webhook(secret).verify(body, headers)
            verified = True
        except Exception:  # any failure to verify is a refusal, as a real receiver does
            payload, verified = None, False
        status = 400 if not verified else (500 if fail else 200)
        with LOCK:
            STATE["deliveries"].append(
                {"id": headers.get("webhook-id"), "status": status, "verified": verified, "payload": payload}
            )
        self.answer(status)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
