//! The metered LLM gateway (issue 13; see `docs/dev/plan-llm-gateway.md`). Today its pure first
//! part: [`bound`], an upper bound on the input tokens of an OpenAI Chat Completions request that
//! needs no tokenizer, so the gateway can hold a call's worst case before forwarding it.

pub mod bound;
