"""One call through LangChain's `ChatOpenAI` pointed at creditgraph's LLM gateway, as a
LangChain agent makes it, for creditgraph's tests.

Usage: langchain_call.py '<json plan>' with {"base_url", "api_key", "model", "max_tokens",
"messages"} (role/content pairs). Prints {"content", "prompt_tokens", "completion_tokens"}.
"""

import json
import sys

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

plan = json.loads(sys.argv[1])
model = ChatOpenAI(
    base_url=plan["base_url"], api_key=plan["api_key"], model=plan["model"],
    max_tokens=plan["max_tokens"], max_retries=0,
)
kinds = {"system": SystemMessage, "user": HumanMessage}
answer = model.invoke([kinds[message["role"]](content=message["content"]) for message in plan["messages"]])
usage = answer.response_metadata["token_usage"]
print(json.dumps({
    "content": answer.content,
    "prompt_tokens": usage["prompt_tokens"],
    "completion_tokens": usage["completion_tokens"],
}))
