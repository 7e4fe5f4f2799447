"""Calls creditgraph's LLM gateway with the official `openai` Python SDK, as an agent would,
for creditgraph's tests (the gateway must work with the SDK unchanged).

Usage: openai_calls.py '<json plan>' where the plan is {"base_url", "api_key", "model",
"calls", "max_tokens", "messages", "stream"?, "headers"?}. All calls run at once (one thread each). Prints one JSON
line per call as it ends (in the order they end): {"ok": true, "hold_id", "cost", "usage": {...}, "content"} or
{"ok": false, "status", "code", "required", "available"}.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

import openai

plan = json.loads(sys.argv[1])
client = openai.OpenAI(base_url=plan["base_url"], api_key=plan["api_key"], max_retries=0, timeout=60)


def streamed(raw):
    """Reads a streamed answer to its end: its text and the usage chunk's counts (if any)."""
    content, usage = "", None
    for chunk in raw.parse():
        for choice in chunk.choices:
            content += choice.delta.content or ""
        if chunk.usage is not None:
            usage = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens}
    return content, usage


def call(_index):
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=plan["model"], messages=plan["messages"], max_tokens=plan["max_tokens"],
            stream=plan.get("stream", False), extra_headers=plan.get("headers"),
        )
        if plan.get("stream", False):
            content, usage = streamed(raw)
        else:
            completion = raw.parse()
            content = completion.choices[0].message.content
            usage = {
                "prompt_tokens": completion.usage.prompt_tokens,
                "completion_tokens": completion.usage.completion_tokens,
            }
        return {
            "ok": True,
            "hold_id": raw.headers.get("x-creditgraph-hold-id"),
            "cost": raw.headers.get("x-creditgraph-cost"),
            "usage": usage,
            "content": content,
        }
    except openai.APIStatusError as error:
        body = error.body if isinstance(error.body, dict) else {}
        return {
            "ok": False,
            "status": error.status_code,
            "code": error.code,
            "required": body.get("required"),
            "available": body.get("available"),
            "remaining": body.get("remaining"),
        }


with ThreadPoolExecutor(max_workers=max(1, plan["calls"])) as pool:
    for done in as_completed([pool.submit(call, index) for index in range(plan["calls"])]):
        print(json.dumps(done.result()), flush=True)
