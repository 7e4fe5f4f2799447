//! A true upper bound on a chat request's input tokens, without a tokenizer.
//!
//! Why it holds: the OpenAI models (and every byte-level BPE) encode text as a sequence of
//! tokens each covering at least one byte of its UTF-8 form, so a text never takes more tokens
//! than it has bytes. What the upstream adds around the text is bounded per message (role and
//! separators, [`MESSAGE_OVERHEAD_TOKENS`]) and per request (the reply's priming,
//! [`REQUEST_OVERHEAD_TOKENS`]). So the bound is:
//!
//! - every string inside each message (content text and parts, names, tool calls' names and
//!   arguments, image URLs) by its UTF-8 bytes, and every number by the bytes of its text;
//! - plus [`IMAGE_TOKENS_MAX`] per image part, because an image is priced by its pixels, not by
//!   its URL's bytes;
//! - plus the whole JSON text of `tools`, `functions`, `tool_choice` and `response_format` (the
//!   upstream renders these schemas into the prompt; keys included, it can only over-count);
//! - plus the overheads.
//!
//! It over-counts (English text runs about four bytes a token), which only makes the hold larger
//! than the capture: the settle captures the upstream's reported usage.

use serde_json::Value;

/// Tokens of framing per message (role, start and end markers): OpenAI documents 3–4.
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 8;
/// Tokens of framing per request (the priming of the reply): OpenAI documents 3.
pub const REQUEST_OVERHEAD_TOKENS: u64 = 16;
/// An image part's most tokens: OpenAI's high-detail cost tops out well below this (85 + 170
/// per 512-pixel tile of an image scaled to at most 2048 × 768 … 2048 pixels).
pub const IMAGE_TOKENS_MAX: u64 = 3_000;
/// Most messages one request may carry.
pub const MESSAGES_MAX: usize = 4_096;
/// The request fields outside `messages` whose JSON text the upstream renders into the prompt.
pub const PROMPT_FIELDS: [&str; 4] = ["tools", "functions", "tool_choice", "response_format"];

/// Why a request has no bound: it is not a chat request this gateway forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoundError {
    /// `messages` is missing, not an array, empty, too long, or holds something not an object.
    Messages(String),
}

impl std::fmt::Display for BoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundError::Messages(detail) => write!(f, "messages: {detail}"),
        }
    }
}

impl std::error::Error for BoundError {}

/// The most input tokens `request` (a Chat Completions body) can use.
pub fn input_tokens_max(request: &Value) -> Result<u64, BoundError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| BoundError::Messages("an array of messages is required".to_owned()))?;
    if messages.is_empty() || messages.len() > MESSAGES_MAX {
        return Err(BoundError::Messages(format!("1 to {MESSAGES_MAX} messages")));
    }
    let mut tokens = REQUEST_OVERHEAD_TOKENS;
    for message in messages {
        if !message.is_object() {
            return Err(BoundError::Messages("every message is an object".to_owned()));
        }
        tokens = tokens.saturating_add(MESSAGE_OVERHEAD_TOKENS).saturating_add(value_tokens(message));
    }
    for field in PROMPT_FIELDS {
        if let Some(value) = request.get(field) {
            tokens = tokens.saturating_add(value.to_string().len() as u64);
        }
    }
    Ok(tokens)
}

/// Bytes of every string and number inside `value`, and [`IMAGE_TOKENS_MAX`] per image part.
fn value_tokens(value: &Value) -> u64 {
    match value {
        Value::String(text) => text.len() as u64,
        Value::Number(number) => number.to_string().len() as u64,
        Value::Null | Value::Bool(_) => 0,
        Value::Array(items) => items.iter().map(value_tokens).fold(0, u64::saturating_add),
        Value::Object(fields) => {
            let image = fields
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|kind| kind.starts_with("image") || kind == "input_audio");
            let own = if image { IMAGE_TOKENS_MAX } else { 0 };
            fields.values().map(value_tokens).fold(own, u64::saturating_add)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn text_messages_count_their_bytes_and_framing() {
        let request = json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2 + 2 = ? 한국어"},
        ]});
        let text_bytes = ("system".len() + "Be brief.".len() + "user".len() + "2 + 2 = ? 한국어".len()) as u64;
        let expected = REQUEST_OVERHEAD_TOKENS + 2 * MESSAGE_OVERHEAD_TOKENS + text_bytes;
        assert_eq!(input_tokens_max(&request), Ok(expected));
    }

    #[test]
    fn parts_tool_calls_images_and_tools_all_count() {
        let base = json!({"messages": [{"role": "user", "content": "hi"}]});
        let plain = input_tokens_max(&base).unwrap();
        let parts = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
        ]}]});
        assert!(
            input_tokens_max(&parts).unwrap() >= plain + IMAGE_TOKENS_MAX + "https://example.com/cat.png".len() as u64
        );
        let tool_call = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
        ]});
        assert!(input_tokens_max(&tool_call).unwrap() > plain + "{\"a\": 2, \"b\": 2}".len() as u64);
        let tools = json!({"messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]});
        let schema_bytes = tools["tools"].to_string().len() as u64;
        assert_eq!(input_tokens_max(&tools).unwrap(), plain + schema_bytes);
    }

    #[test]
    fn requests_without_messages_have_no_bound() {
        for request in [json!({}), json!({"messages": "hi"}), json!({"messages": []}), json!({"messages": [1]})] {
            assert!(matches!(input_tokens_max(&request), Err(BoundError::Messages(_))), "{request}");
        }
        let many = json!({"messages": vec![json!({"role": "user", "content": "x"}); MESSAGES_MAX + 1]});
        assert!(input_tokens_max(&many).is_err());
    }

    /// A byte-level tokenizer: tokens of 1 to 4 bytes, cut wherever the random lengths say
    /// (a BPE's merges only ever join bytes, so each token covers at least one).
    fn byte_level_tokens(text: &str, cuts: &[u8]) -> u64 {
        let mut remaining = text.len();
        let mut tokens = 0;
        let mut cut = cuts.iter().cycle();
        while remaining > 0 {
            let length = usize::from(*cut.next().unwrap_or(&1)).clamp(1, 4);
            remaining = remaining.saturating_sub(length);
            tokens += 1;
        }
        tokens
    }

    proptest! {
        /// Whatever the texts and however a byte-level tokenizer cuts them, the bound is at
        /// least the tokens of the texts plus the framing the upstream adds (at most 4 per
        /// message and 3 per request, as OpenAI documents).
        #[test]
        fn the_bound_holds_for_any_text_and_tokenization(
            texts in proptest::collection::vec(".{0,200}", 1..20),
            cuts in proptest::collection::vec(1u8..=4, 1..16),
        ) {
            let messages: Vec<Value> = texts.iter().map(|text| json!({"role": "user", "content": text})).collect();
            let bound = input_tokens_max(&json!({"messages": messages})).unwrap();
            let used: u64 = texts.iter().map(|text| byte_level_tokens(text, &cuts) + 1 + 4).sum::<u64>() + 3;
            prop_assert!(bound >= used, "bound {bound} < used {used}");
            // Adding a message never lowers it.
            let mut more = messages.clone();
            more.push(json!({"role": "user", "content": ""}));
            let grown = input_tokens_max(&json!({"messages": more})).unwrap();
            prop_assert!(grown > bound, "{grown} <= {bound}");
        }
    }
}
