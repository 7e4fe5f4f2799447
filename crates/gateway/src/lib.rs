//! The metered LLM gateway's pure part: [`bound`], an upper bound on the input tokens of an
//! OpenAI Chat Completions request that needs no tokenizer, so the gateway can hold a call's
//! worst case before forwarding it. The route that holds, forwards and settles is
//! `server::routes::gateway`; this crate does no I/O.

pub mod bound;
