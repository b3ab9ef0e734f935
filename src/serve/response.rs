//! OpenAI's response shapes: whole objects (`chat.completion`, `text_completion`) and stream
//! chunks (`chat.completion.chunk`, `text_completion`), with `usage` and cascade's own
//! speculative statistics.

use serde_json::{json, Value};

use cascade_engine::Mode;

use super::run::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// What every object of one response carries.
#[derive(Debug, Clone)]
pub struct Meta {
    pub kind: Kind,
    /// `chatcmpl-N` or `cmpl-N`.
    pub id: String,
    pub created: u64,
    pub model: String,
    pub mode: Mode,
}

impl Meta {
    pub fn new(kind: Kind, n: u64, model: &str, mode: Mode) -> Meta {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        Meta {
            kind,
            id: format!("{prefix}-{n}"),
            created: unix_now(),
            model: model.to_string(),
            mode,
        }
    }

    fn object(&self, name: &str, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": concat!("cascade-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        })
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn usage(o: &Outcome) -> Value {
    let c = &o.completion;
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "total_tokens": c.prompt_tokens + o.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    })
}

/// The request's speculative statistics (the `cascade` field).
pub fn cascade_stats(mode: &Mode, o: &Outcome) -> Value {
    let s = &o.completion.stats;
    json!({
        "mode": mode.name(),
        "drafted": s.drafted,
        "accepted": s.accepted,
        "acceptance_rate": s.acceptance_rate,
        "target_passes": s.target_passes,
        "per_position_acceptance": s.per_position_acceptance,
        "draft_lengths": s.draft_lengths,
        "cached_tokens": o.completion.cached_tokens,
        "decode_tokens_per_s": s.decode_tokens_per_s,
    })
}

/// The whole (not streamed) response.
pub fn full(meta: &Meta, text: String, o: &Outcome) -> Value {
    let choice = match meta.kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": o.finish,
        }),
        Kind::Completion => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": o.finish,
        }),
    };
    let name = match meta.kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    let mut v = meta.object(name, json!([choice]));
    v["usage"] = usage(o);
    v["cascade"] = cascade_stats(&meta.mode, o);
    v
}

/// Stream chunks of one response.
pub struct Chunks {
    pub meta: Meta,
    /// `stream_options.include_usage`: every chunk has `usage` (null but in the last one).
    pub include_usage: bool,
}

impl Chunks {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let choice = match self.meta.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => json!({
                "index": 0,
                "text": delta.get("content").and_then(Value::as_str).unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        let mut v = self.meta.object(self.chunk_name(), json!([choice]));
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The first chunk of a chat stream: the role.
    pub fn role(&self) -> Option<Value> {
        (self.meta.kind == Kind::Chat)
            .then(|| self.chunk(json!({"role": "assistant", "content": ""}), None))
    }

    pub fn text(&self, text: &str) -> Value {
        self.chunk(json!({"content": text}), None)
    }

    /// The last chunks: the finish reason (with cascade's statistics), then the usage if asked.
    pub fn end(&self, o: &Outcome) -> Vec<Value> {
        let mut last = self.chunk(json!({}), Some(o.finish));
        last["cascade"] = cascade_stats(&self.meta.mode, o);
        let mut out = vec![last];
        if self.include_usage {
            let mut u = self.meta.object(self.chunk_name(), json!([]));
            u["usage"] = usage(o);
            out.push(u);
        }
        out
    }

    fn chunk_name(&self) -> &'static str {
        match self.meta.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        }
    }
}
