//! From an OpenAI request to the engine's: sampling, limits, stop strings, and the speculative
//! mode (the server's flags as defaults, the request's `cascade` object on top).

use cascade_engine::{
    Cascade, DraftLen, GenerateConfig, Grammar, Message, Mode, NgramProposer, Prompt, Rule,
    SamplingParams, SpecConfig, MAX_DRAFT_LEN,
};
use serde_json::Value;

use super::error::ApiError;
use super::openai::{
    CascadeExt, ChatRequest, Common, CompletionRequest, Content, ModeName, PromptIn,
    ResponseFormat, RuleName, Stop,
};

/// Stop strings a request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// The server's speculative settings, which requests start from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModeDefaults {
    pub mode: ModeName,
    pub rule: Option<Rule>,
    pub alpha: Option<f32>,
    pub draft_len: DraftLen,
    pub lookup: bool,
    /// Whether a draft model is loaded.
    pub draft_model: bool,
}

/// What the server needs to know about the model to check a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub context: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
}

/// A request's generation settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: GenerateConfig,
    pub mode: Mode,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// What the output must match (`response_format` or `grammar`).
    pub grammar: Option<Grammar>,
}

pub fn settings(c: &Common, d: &ModeDefaults, limits: Limits) -> Result<Settings, ApiError> {
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::field(
                "n",
                format!("{n}: only n = 1 is supported"),
            ));
        }
    }
    unsupported(c)?;
    let sampling = sampling(c)?;
    let max_tokens = max_tokens(c, limits)?;
    let stops = stops(c.stop.as_ref())?;
    let mode = resolve_mode(d, c.cascade.as_ref().unwrap_or(&CascadeExt::default()))?;
    Ok(Settings {
        config: GenerateConfig {
            max_tokens,
            sampling,
            stop_at_eog: !c.ignore_eos,
        },
        mode,
        stops,
        stream: c.stream,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        grammar: grammar(c)?,
    })
}

/// The grammar a request asks for: `response_format` (OpenAI's) or `grammar` (Lark), not both.
fn grammar(c: &Common) -> Result<Option<Grammar>, ApiError> {
    let format = match &c.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(Grammar::JsonObject),
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            Some(s) if s.is_object() || s.is_boolean() => Some(Grammar::JsonSchema(s.clone())),
            Some(_) => {
                return Err(ApiError::field(
                    "response_format.json_schema.schema",
                    "must be a JSON Schema object",
                ))
            }
            None => {
                return Err(ApiError::field(
                    "response_format.json_schema.schema",
                    "required",
                ))
            }
        },
    };
    let lark = match c.grammar.as_deref() {
        None => None,
        Some(g) if g.contains("::=") => {
            return Err(ApiError::field(
                "grammar",
                "GBNF is not read: write the grammar in Lark syntax (rules as `name: ...`, \
                 the start rule `start`)",
            ))
        }
        Some(g) => Some(Grammar::Lark(g.to_string())),
    };
    match (format, lark) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "grammar",
            "give either response_format or grammar, not both",
        )),
        (f, l) => Ok(f.or(l)),
    }
}

/// `tools` are not served yet: a request that offers any is refused (not answered as if it had
/// offered none), unless it also says `tool_choice: "none"`.
pub fn check_tools(r: &ChatRequest) -> Result<(), ApiError> {
    let offered = r.tools.as_ref().is_some_and(|t| !t.is_empty());
    let declined = r.tool_choice.as_ref().and_then(Value::as_str) == Some("none");
    if offered && !declined {
        return Err(ApiError::field("tools", "tool calls are not supported yet"));
    }
    Ok(())
}

/// Fields cascade does not implement: a clear 400 rather than an answer without them.
fn unsupported(c: &Common) -> Result<(), ApiError> {
    let asked = |v: &Option<Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    };
    for (name, v) in [("logprobs", &c.logprobs), ("top_logprobs", &c.top_logprobs)] {
        if asked(v) {
            return Err(ApiError::field(name, "log probabilities are not supported"));
        }
    }
    if c.echo == Some(true) {
        return Err(ApiError::field(
            "echo",
            "echoing the prompt is not supported",
        ));
    }
    Ok(())
}

fn sampling(c: &Common) -> Result<SamplingParams, ApiError> {
    let temperature = c.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::field(
            "temperature",
            format!("{temperature} must be in [0, 2]"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field(
            "top_p",
            format!("{top_p} must be in (0, 1]"),
        ));
    }
    let top_k = match c.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => k as usize,
        k => {
            return Err(ApiError::field(
                "top_k",
                format!("{k} must be ≥ 1 (or 0/-1: off)"),
            ))
        }
    };
    Ok(SamplingParams {
        temperature,
        top_k,
        top_p,
        seed: c.seed.unwrap_or_else(random_seed),
    })
}

/// A seed for a request that gives none (sampled requests then differ from run to run).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn max_tokens(c: &Common, limits: Limits) -> Result<usize, ApiError> {
    let (name, asked) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    match asked {
        None => Ok(limits.default_max_tokens.min(limits.context)),
        Some(0) => Err(ApiError::field(name, "must be at least 1")),
        Some(m) if m > limits.context as u64 => Err(ApiError::field(
            name,
            format!(
                "{m} is more than the model's context of {} tokens",
                limits.context
            ),
        )),
        Some(m) => Ok(m as usize),
    }
}

fn stops(stop: Option<&Stop>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => return Ok(Vec::new()),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::field(
            "stop",
            format!("{} strings: at most {MAX_STOPS}", list.len()),
        ));
    }
    if list
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::field(
            "stop",
            format!("each stop string must have 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(list)
}

/// The request's mode: its `cascade` object over the server's defaults.
pub fn resolve_mode(d: &ModeDefaults, ext: &CascadeExt) -> Result<Mode, ApiError> {
    let mode = ext.mode.unwrap_or(d.mode);
    let name = format!("{mode:?}").to_lowercase();
    if let Some(a) = ext.alpha {
        if !(0.0..=1.0).contains(&a) {
            return Err(ApiError::field(
                "cascade.alpha",
                format!("{a} must be in [0, 1]"),
            ));
        }
    }
    let asked_rule = ext.rule.is_some() || ext.alpha.is_some();
    if asked_rule && !matches!(mode, ModeName::Cascade | ModeName::Answer) {
        return Err(ApiError::field(
            "cascade.rule",
            format!("a rule and alpha go with mode cascade or answer, not {name}"),
        ));
    }
    let needs_model = !matches!(mode, ModeName::Target | ModeName::Exact);
    if needs_model && !d.draft_model {
        return Err(ApiError::field(
            "cascade.mode",
            format!("mode {name} needs a draft model: start the server with --draft PATH"),
        ));
    }
    let cascade = cascade_rule(mode, ext, d)?;
    let draft_len = match &ext.draft_len {
        None => d.draft_len,
        Some(v) => draft_len(v)?,
    };
    let lookup = ext.lookup.unwrap_or(d.lookup);
    Ok(match mode {
        ModeName::Target => Mode::Target,
        ModeName::Draft => Mode::Draft,
        ModeName::Exact if !d.draft_model && !lookup => return Err(ApiError::field(
            "cascade.mode",
            "exact without a draft model drafts by prompt lookup: it cannot go with lookup false",
        )),
        ModeName::Exact | ModeName::Cascade | ModeName::Answer => Mode::Speculative(SpecConfig {
            draft_len,
            draft_model: d.draft_model,
            lookup: lookup.then(|| NgramProposer::for_request(d.draft_model)),
            cascade,
            answer: mode == ModeName::Answer,
        }),
    })
}

/// The deferral rule of a cascade or answer request (the request's rule and alpha, else the
/// server's).
fn cascade_rule(
    mode: ModeName,
    ext: &CascadeExt,
    d: &ModeDefaults,
) -> Result<Option<Cascade>, ApiError> {
    let rule = ext.rule.map(Rule::from).or(d.rule);
    let alpha = ext.alpha.or(d.alpha);
    match (mode, rule, alpha) {
        (ModeName::Cascade | ModeName::Answer, Some(rule), Some(alpha)) => {
            Ok(Some(Cascade { rule, alpha }))
        }
        (ModeName::Cascade, _, _) => Err(ApiError::field(
            "cascade.rule",
            "mode cascade needs a rule (chow|diff|opt|token) and an alpha",
        )),
        (ModeName::Answer, Some(_), None) => {
            Err(ApiError::field("cascade.alpha", "a rule needs an alpha"))
        }
        (ModeName::Answer, None, Some(_)) => {
            Err(ApiError::field("cascade.rule", "an alpha needs a rule"))
        }
        _ => Ok(None),
    }
}

impl From<RuleName> for Rule {
    fn from(r: RuleName) -> Rule {
        match r {
            RuleName::Chow => Rule::Chow,
            RuleName::Diff => Rule::Diff,
            RuleName::Opt => Rule::Opt,
            RuleName::Token => Rule::Token,
        }
    }
}

/// `"auto"` (up to 8 tokens a round) or a number of tokens.
fn draft_len(v: &Value) -> Result<DraftLen, ApiError> {
    let bad = || {
        ApiError::field(
            "cascade.draft_len",
            format!("{v} must be \"auto\" or a number of tokens from 1 to {MAX_DRAFT_LEN}"),
        )
    };
    if v.as_str() == Some("auto") {
        return Ok(DraftLen::default());
    }
    match v.as_u64() {
        Some(k) if (1..=MAX_DRAFT_LEN as u64).contains(&k) => Ok(DraftLen::Fixed(k as usize)),
        _ => Err(bad()),
    }
}

/// The chat request's messages as the engine's (roles checked, text parts joined).
pub fn chat_prompt(r: &ChatRequest) -> Result<Prompt, ApiError> {
    check_tools(r)?;
    if r.messages.is_empty() {
        return Err(ApiError::field(
            "messages",
            "must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::field(
                    format!("messages[{i}].role"),
                    format!("'{other}': expected system, user or assistant"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => text_parts(i, parts)?,
        };
        out.push(Message {
            role: role.into(),
            content,
        });
    }
    Ok(Prompt::Chat(out))
}

fn text_parts(i: usize, parts: &[super::openai::Part]) -> Result<String, ApiError> {
    let mut s = String::new();
    for (j, p) in parts.iter().enumerate() {
        match (p.kind.as_str(), &p.text) {
            ("text", Some(t)) => s.push_str(t),
            ("text", None) => {
                return Err(ApiError::field(
                    format!("messages[{i}].content[{j}].text"),
                    "missing",
                ))
            }
            (other, _) => {
                return Err(ApiError::field(
                    format!("messages[{i}].content[{j}].type"),
                    format!("'{other}': only text parts are supported"),
                ))
            }
        }
    }
    Ok(s)
}

/// The completion request's prompt (one prompt per request).
pub fn completion_prompt(r: &CompletionRequest) -> Result<Prompt, ApiError> {
    let one = |n: usize| {
        ApiError::field(
            "prompt",
            format!("{n} prompts: one prompt per request is supported"),
        )
    };
    Ok(match &r.prompt {
        PromptIn::Text(t) => Prompt::Text(t.clone()),
        PromptIn::Texts(v) if v.len() == 1 => Prompt::Text(v[0].clone()),
        PromptIn::Texts(v) => return Err(one(v.len())),
        PromptIn::Tokens(ids) => Prompt::Tokens(ids.clone()),
        PromptIn::TokenLists(v) if v.len() == 1 => Prompt::Tokens(v[0].clone()),
        PromptIn::TokenLists(v) => return Err(one(v.len())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(draft: bool) -> ModeDefaults {
        ModeDefaults {
            mode: if draft {
                ModeName::Exact
            } else {
                ModeName::Target
            },
            rule: None,
            alpha: None,
            draft_len: DraftLen::default(),
            lookup: true,
            draft_model: draft,
        }
    }

    fn ext(v: serde_json::Value) -> CascadeExt {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_apply_without_an_extension() {
        assert_eq!(
            resolve_mode(&defaults(false), &CascadeExt::default()).unwrap(),
            Mode::Target
        );
        assert_eq!(
            resolve_mode(&defaults(true), &CascadeExt::default())
                .unwrap()
                .name(),
            "exact"
        );
    }

    #[test]
    fn a_request_asks_for_a_cascade() {
        let m = resolve_mode(
            &defaults(true),
            &ext(serde_json::json!({"mode": "cascade", "rule": "token", "alpha": 0.3, "draft_len": 4})),
        )
        .unwrap();
        let Mode::Speculative(s) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            s.cascade,
            Some(Cascade {
                rule: Rule::Token,
                alpha: 0.3
            })
        );
        assert_eq!(s.draft_len, DraftLen::Fixed(4));
    }

    #[test]
    fn bad_extensions_name_their_field() {
        let d = defaults(true);
        let cases = [
            (serde_json::json!({"mode": "cascade"}), "cascade.rule"),
            (
                serde_json::json!({"mode": "exact", "rule": "chow"}),
                "cascade.rule",
            ),
            (
                serde_json::json!({"mode": "cascade", "rule": "chow", "alpha": 2.0}),
                "cascade.alpha",
            ),
            (serde_json::json!({"draft_len": 0}), "cascade.draft_len"),
            (
                serde_json::json!({"draft_len": "fast"}),
                "cascade.draft_len",
            ),
        ];
        for (v, field) in cases {
            let e = resolve_mode(&d, &ext(v.clone())).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{v}: {e:?}");
        }
        let e = resolve_mode(
            &defaults(false),
            &ext(serde_json::json!({"mode": "answer"})),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("cascade.mode"));
    }

    #[test]
    fn limits_and_sampling_are_checked() {
        let limits = Limits {
            context: 100,
            default_max_tokens: 16,
        };
        let d = defaults(false);
        let common = |v: serde_json::Value| -> Common { serde_json::from_value(v).unwrap() };
        let s = settings(&common(serde_json::json!({})), &d, limits).unwrap();
        assert_eq!(s.config.max_tokens, 16);
        let off = serde_json::json!({"logprobs": null, "top_logprobs": 0, "echo": false});
        settings(&common(off), &d, limits).unwrap();
        let s = settings(
            &common(serde_json::json!({"max_completion_tokens": 5, "max_tokens": 9})),
            &d,
            limits,
        )
        .unwrap();
        assert_eq!(s.config.max_tokens, 5);
        for (v, field) in [
            (serde_json::json!({"max_tokens": 101}), "max_tokens"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"n": 2}), "n"),
            (serde_json::json!({"temperature": 3.0}), "temperature"),
            (serde_json::json!({"top_p": 0.0}), "top_p"),
            (serde_json::json!({"top_k": -2}), "top_k"),
            (
                serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (serde_json::json!({"stop": ""}), "stop"),
            (serde_json::json!({"logprobs": 2}), "logprobs"),
            (serde_json::json!({"logprobs": true}), "logprobs"),
            (serde_json::json!({"echo": true}), "echo"),
        ] {
            let e = settings(&common(v.clone()), &d, limits).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{v}");
        }
    }

    #[test]
    fn chat_messages_are_checked() {
        let r: ChatRequest = serde_json::from_value(serde_json::json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]}))
        .unwrap();
        let Prompt::Chat(m) = chat_prompt(&r).unwrap() else {
            panic!()
        };
        assert_eq!(m[1].content, "ab");
        let r: ChatRequest = serde_json::from_value(
            serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}),
        )
        .unwrap();
        assert_eq!(
            chat_prompt(&r).unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
        let r: ChatRequest = serde_json::from_value(serde_json::json!({"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}))
        .unwrap();
        assert_eq!(
            chat_prompt(&r).unwrap_err().param.as_deref(),
            Some("messages[0].content[0].type")
        );
    }

    fn common(v: serde_json::Value) -> Common {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn response_format_and_grammar_become_the_engine_grammar() {
        let g = |v| grammar(&common(v));
        assert_eq!(g(serde_json::json!({})).unwrap(), None);
        let text = serde_json::json!({"response_format": {"type": "text"}});
        assert_eq!(g(text).unwrap(), None);
        let obj = serde_json::json!({"response_format": {"type": "json_object"}});
        assert_eq!(g(obj).unwrap(), Some(Grammar::JsonObject));
        let schema = serde_json::json!({"type": "object"});
        let with = serde_json::json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": schema, "strict": true}}});
        assert_eq!(g(with).unwrap(), Some(Grammar::JsonSchema(schema)));
        let lark = serde_json::json!({"grammar": "start: \"a\""});
        assert_eq!(g(lark).unwrap(), Some(Grammar::Lark("start: \"a\"".into())));
    }

    #[test]
    fn bad_structured_requests_name_their_field() {
        let param = |v| grammar(&common(v)).unwrap_err().param.unwrap();
        let no_schema = serde_json::json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x"}}});
        assert_eq!(param(no_schema), "response_format.json_schema.schema");
        let not_object = serde_json::json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": [1]}}});
        assert_eq!(param(not_object), "response_format.json_schema.schema");
        assert_eq!(
            param(serde_json::json!({"grammar": "root ::= \"a\""})),
            "grammar"
        );
        let both = serde_json::json!({"grammar": "start: \"a\"",
            "response_format": {"type": "json_object"}});
        assert_eq!(param(both), "grammar");
        let tools = |v: serde_json::Value| -> ChatRequest { serde_json::from_value(v).unwrap() };
        let msgs = serde_json::json!([{"role": "user", "content": "hi"}]);
        let f = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        let offered = tools(serde_json::json!({"messages": msgs, "tools": f}));
        assert_eq!(
            check_tools(&offered).unwrap_err().param.as_deref(),
            Some("tools")
        );
        let declined =
            tools(serde_json::json!({"messages": msgs, "tools": f, "tool_choice": "none"}));
        check_tools(&declined).unwrap();
        check_tools(&tools(serde_json::json!({"messages": msgs, "tools": []}))).unwrap();
    }
}
