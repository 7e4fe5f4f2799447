#!/usr/bin/env bash
# Creates a Python venv at $1 with the third-party packages the Rust tests drive as real
# clients (`standardwebhooks`, the webhook receiver's signature check; `openai`, the official SDK
# the LLM gateway is driven with, and `langchain-openai`, LangChain's `ChatOpenAI`;
# `prometheus-client`, whose text parser reads `/metrics` in the tests; `playwright`, which
# drives Debian's Chromium through the console, never downloading a browser of its own). scripts/test.sh
# installs it in the background while the tests build and points CREDITGRAPH_TEST_PYTHON at it.
set -euo pipefail

# Pinned so a new release cannot change CI's inputs.
STANDARDWEBHOOKS_VERSION="1.1.0"
OPENAI_VERSION="1.109.1"
LANGCHAIN_OPENAI_VERSION="0.3.35"
PROMETHEUS_CLIENT_VERSION="0.23.1"
PLAYWRIGHT_VERSION="1.49.1"
# The Python client's own checks and integrations (scripts/python-client.sh).
PYTEST_VERSION="8.4.2"
MYPY_VERSION="1.18.2"
PDOC_VERSION="15.0.4"
LANGGRAPH_VERSION="0.6.7"
FASTAPI_VERSION="0.118.0"
SETUPTOOLS_VERSION="80.9.0"

venv="${1:?usage: test-venv.sh <venv directory>}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_VERSION" \
    "openai==$OPENAI_VERSION" "langchain-openai==$LANGCHAIN_OPENAI_VERSION" \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION" "playwright==$PLAYWRIGHT_VERSION" \
    "pytest==$PYTEST_VERSION" "mypy==$MYPY_VERSION" "pdoc==$PDOC_VERSION" "langgraph==$LANGGRAPH_VERSION" \
    "fastapi==$FASTAPI_VERSION" "setuptools==$SETUPTOOLS_VERSION"
"$venv/bin/python" -c "import standardwebhooks, openai, langchain_openai, prometheus_client, playwright, langgraph, fastapi"
