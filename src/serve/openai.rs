//! OpenAI's request shapes (the fields cascade reads; unknown fields are ignored) and the
//! parsing of a request body into them, with the field at fault named on error.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;

/// Fields shared by `/v1/chat/completions` and `/v1/completions`.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (vLLM's): 0 or -1 disable it.
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Extension (vLLM's): keep generating past end-of-generation tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Extension: speculative settings of this request.
    pub cascade: Option<CascadeExt>,
    /// Not supported: refused when asked for (null, false or 0 pass).
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub echo: Option<bool>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}`: constrained output.
    pub response_format: Option<ResponseFormat>,
    /// Extension: a grammar the output follows, in llguidance's Lark dialect.
    pub grammar: Option<String>,
}

/// OpenAI's `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`: the schema and its name (`strict` is accepted: the output
/// always follows the schema).
#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `"cascade": {"mode", "rule", "alpha", "draft_len", "lookup"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeExt {
    pub mode: Option<ModeName>,
    pub rule: Option<RuleName>,
    pub alpha: Option<f32>,
    /// `"auto"` or a number of tokens.
    pub draft_len: Option<Value>,
    pub lookup: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    Target,
    Draft,
    Exact,
    Cascade,
    Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleName {
    Chow,
    Diff,
    Opt,
    Token,
}

/// What `/v1/chat/completions` adds to [`Common`].
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Not supported yet: refused when given (an empty list, or `tool_choice: "none"`, pass).
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// What `/v1/completions` adds to [`Common`].
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptIn,
}

/// `prompt`: a string, a list of one string, token ids, or a list of one list of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// Parses a request body: malformed JSON is a 400 saying where it breaks.
pub fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Reads a typed view of a parsed body: a field of the wrong type or value is a 400 naming it.
pub fn read<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let mut inner = e.into_inner().to_string();
        if inner.contains("untagged enum") {
            inner = expected(&path).to_string();
        }
        match path.as_str() {
            "." | "" => ApiError::bad_request(format!("invalid request: {inner}")),
            _ => ApiError::field(path, inner),
        }
    })
}

/// What a field of several accepted shapes should be.
fn expected(path: &str) -> &'static str {
    let last = path.rsplit('.').next().unwrap_or(path);
    match last {
        "stop" => "must be a string or a list of strings",
        "prompt" => "must be a string, a list of one string, or a list of token ids",
        "content" => "must be a string or a list of {\"type\": \"text\", \"text\": ...} parts",
        _ => "has none of the accepted shapes",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
        read(&parse_body(body)?)
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        let e = parse::<ChatRequest>(b"{\"messages\": [").unwrap_err();
        assert!(e.message.contains("malformed JSON"), "{}", e.message);
        assert!(e.param.is_none());
        let e = parse::<ChatRequest>(b"[1]").unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
    }

    #[test]
    fn a_bad_field_is_named() {
        let e = parse::<Common>(br#"{"prompt": "x", "max_tokens": "many"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(
            e.message.starts_with("max_tokens: invalid type"),
            "{}",
            e.message
        );
        let e = parse::<ChatRequest>(br#"{"messages": [{"role": 3}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse::<Common>(br#"{"cascade": {"mode": "fast"}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("cascade.mode"));
        let e = parse::<Common>(br#"{"stop": 5}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        assert!(e.message.contains("list of strings"), "{}", e.message);
        let e =
            parse::<ChatRequest>(br#"{"messages": [{"role": "user", "content": 1}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn a_missing_field_is_reported() {
        let e = parse::<ChatRequest>(br#"{"model": "m"}"#).unwrap_err();
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn content_parts_and_prompt_shapes_parse() {
        let body =
            br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                 "unknown": 1, "stop": ["a", "b"], "cascade": {"draft_len": "auto"}}"#;
        let r: ChatRequest = parse(body).unwrap();
        assert!(matches!(r.messages[0].content, Some(Content::Parts(_))));
        let c: Common = parse(body).unwrap();
        assert!(matches!(c.stop, Some(Stop::Many(_))));
        let r: CompletionRequest = parse(br#"{"prompt": [1, 2, 3]}"#).unwrap();
        assert!(matches!(r.prompt, PromptIn::Tokens(_)));
        let r: CompletionRequest = parse(br#"{"prompt": ["x"]}"#).unwrap();
        assert!(matches!(r.prompt, PromptIn::Texts(_)));
    }
}
