//! One streamed request to an OpenAI-compatible server, timed chunk by chunk.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::prompts::Prompt;
use super::sse::{Event, Parser};

/// Which API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// What every request of a run shares.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint's full URL.
    pub url: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub api_key: Option<String>,
    pub max_tokens: usize,
    pub temperature: f64,
    /// Past this a request counts as failed.
    pub timeout: Duration,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The server answered with a status other than 2xx.
    Status { code: u16, message: String },
    /// The request took longer than the timeout.
    Timeout,
    /// Connecting, sending or reading failed.
    Connection(String),
    /// The stream carried an error, a malformed chunk, or ended early.
    Stream(String),
}

impl Failure {
    /// The key failures are counted under: `http 429`, `timeout`, `connection`, `stream`.
    pub fn key(&self) -> String {
        match self {
            Failure::Status { code, .. } => format!("http {code}"),
            Failure::Timeout => "timeout".into(),
            Failure::Connection(_) => "connection".into(),
            Failure::Stream(_) => "stream".into(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Failure::Status { message, .. } | Failure::Connection(message) => {
                format!("{}: {message}", self.key())
            }
            Failure::Stream(message) => format!("stream: {message}"),
            Failure::Timeout => "timeout".into(),
        }
    }
}

/// One request as measured: times are from just before it was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    /// Arrival of each chunk that carried content.
    pub chunks: Vec<Duration>,
    /// Arrival of the last chunk of any kind (the usage chunk included, `[DONE]` not).
    pub e2el: Duration,
    /// `usage.completion_tokens`, when the server sent it.
    pub usage_tokens: Option<usize>,
    /// `usage.prompt_tokens`, when the server sent it.
    pub prompt_tokens: Option<usize>,
    /// `usage.prompt_tokens_details.cached_tokens` (prompt tokens the server's prefix cache
    /// served), when the server sent it.
    pub cached_tokens: Option<usize>,
    pub error: Option<Failure>,
}

impl RequestRecord {
    pub fn failed(error: Failure, e2el: Duration) -> RequestRecord {
        RequestRecord {
            e2el,
            error: Some(error),
            ..Default::default()
        }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Output tokens: the server's count, else the number of content chunks.
    pub fn output_tokens(&self) -> usize {
        self.usage_tokens.unwrap_or(self.chunks.len())
    }

    /// Time to the first content chunk.
    pub fn ttft(&self) -> Option<Duration> {
        self.chunks.first().copied()
    }
}

/// An HTTP client for benchmarking: no proxy (the server is addressed directly), a bounded
/// connect time.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        // A fresh connection per request (cheap on loopback): a pooled one that the server closed
        // while idle (llama-server does) would fail the next request before it is sent.
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())
}

/// The request body: streamed, with usage in the last chunk.
pub fn body(t: &Target, prompt: &Prompt) -> Value {
    let mut b = json!({
        "model": t.model,
        "max_tokens": t.max_tokens,
        "temperature": t.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match (t.endpoint, prompt) {
        (Endpoint::Chat, Prompt::Text(p)) => {
            b["messages"] = json!([{"role": "user", "content": p}]);
        }
        (Endpoint::Chat, Prompt::Messages(m)) => b["messages"] = json!(m),
        (Endpoint::Completions, Prompt::Text(p)) => b["prompt"] = json!(p),
        // `ServeBench::check` refuses conversations for completions; were one to get here, its
        // contents would be sent one after the other.
        (Endpoint::Completions, Prompt::Messages(m)) => {
            let text: Vec<&str> = m
                .iter()
                .filter_map(|x| x.get("content").and_then(Value::as_str))
                .collect();
            b["prompt"] = json!(text.join("\n"));
        }
    }
    b
}

/// Sends one request and reads its stream to the end, within the target's timeout.
pub async fn send(client: &reqwest::Client, t: &Target, prompt: &Prompt) -> RequestRecord {
    let start = Instant::now();
    match tokio::time::timeout(t.timeout, stream(client, t, prompt, start)).await {
        Ok(rec) => rec,
        Err(_) => RequestRecord::failed(Failure::Timeout, start.elapsed()),
    }
}

async fn stream(
    client: &reqwest::Client,
    t: &Target,
    prompt: &Prompt,
    start: Instant,
) -> RequestRecord {
    let mut c = Collector::default();
    if let Err(e) = read_stream(client, t, prompt, start, &mut c).await {
        c.rec.error = Some(e);
        if c.rec.e2el.is_zero() {
            c.rec.e2el = start.elapsed();
        }
    }
    c.rec
}

async fn read_stream(
    client: &reqwest::Client,
    t: &Target,
    prompt: &Prompt,
    start: Instant,
    c: &mut Collector,
) -> Result<(), Failure> {
    let mut req = client.post(&t.url).json(&body(t, prompt));
    if let Some(k) = &t.api_key {
        req = req.bearer_auth(k);
    }
    let conn = |e: reqwest::Error| Failure::Connection(error_chain(&e));
    let mut resp = req.send().await.map_err(conn)?;
    if !resp.status().is_success() {
        return Err(status_failure(resp).await);
    }
    let mut parser = Parser::new();
    while let Some(bytes) = resp.chunk().await.map_err(conn)? {
        let now = start.elapsed();
        let events = parser
            .push(&bytes)
            .map_err(|e| Failure::Stream(e.to_string()))?;
        for ev in events {
            if c.on_event(&ev, now)? {
                return Ok(());
            }
        }
    }
    if let Some(ev) = parser.finish() {
        c.on_event(&ev, start.elapsed())?;
    }
    if c.finished {
        Ok(())
    } else {
        Err(Failure::Stream(
            "the stream ended without [DONE] or a finish reason".into(),
        ))
    }
}

/// A record being filled, and whether the stream said it was complete.
#[derive(Default)]
struct Collector {
    rec: RequestRecord,
    finished: bool,
}

impl Collector {
    /// Takes one event; true at `[DONE]`.
    fn on_event(&mut self, ev: &Event, now: Duration) -> Result<bool, Failure> {
        if ev.name == "error" {
            return Err(Failure::Stream(error_message(&ev.data)));
        }
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.finished = true;
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| Failure::Stream(format!("malformed chunk: {}", clip(data, 120))))?;
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            return Err(Failure::Stream(message_of(e)));
        }
        self.rec.e2el = now;
        if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
            if has_content(choice) {
                self.rec.chunks.push(now);
            }
            if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.finished = true;
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let count = |k: &str| u.get(k).and_then(Value::as_u64).map(|n| n as usize);
            self.rec.usage_tokens = count("completion_tokens").or(self.rec.usage_tokens);
            self.rec.prompt_tokens = count("prompt_tokens").or(self.rec.prompt_tokens);
            let cached = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64);
            self.rec.cached_tokens = cached.map(|n| n as usize).or(self.rec.cached_tokens);
        }
        Ok(false)
    }
}

/// Whether a choice carries generated text: chat's `delta.content` (or `reasoning_content`),
/// or completions' `text`.
fn has_content(choice: &Value) -> bool {
    let nonempty = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let delta = choice.get("delta");
    nonempty(delta.and_then(|d| d.get("content")))
        || nonempty(delta.and_then(|d| d.get("reasoning_content")))
        || nonempty(choice.get("text"))
}

/// Reads at most 64 KiB of an error answer and keeps its message.
async fn status_failure(mut resp: reqwest::Response) -> Failure {
    let code = resp.status().as_u16();
    let mut body = Vec::new();
    while let Ok(Some(b)) = resp.chunk().await {
        body.extend_from_slice(&b);
        if body.len() > 64 << 10 {
            break;
        }
    }
    Failure::Status {
        code,
        message: error_message(&String::from_utf8_lossy(&body)),
    }
}

/// The message of an error body: OpenAI's `{"error": {"message": ..}}`, `{"error": ".."}`,
/// FastAPI's `{"detail": ..}`, or the text itself, clipped.
pub fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => match v.get("error").or_else(|| v.get("detail")) {
            Some(e) => message_of(e),
            None => message_of(&v),
        },
        Err(_) => clip(body.trim(), 200),
    }
}

fn message_of(e: &Value) -> String {
    if let Some(s) = e.as_str() {
        return clip(s, 200);
    }
    match e.get("message").and_then(Value::as_str) {
        Some(m) => clip(m, 200),
        None => clip(&e.to_string(), 200),
    }
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// An error with its causes (reqwest's own message alone is often just "error sending
/// request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    clip(&s, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> Event {
        Event {
            name: "message".into(),
            data: data.into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn collects_content_usage_and_done() {
        let mut c = Collector::default();
        let chunks = [
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
            r#"{"choices":[{"text":"lo","finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":5}}}"#,
        ];
        for (i, d) in chunks.iter().enumerate() {
            assert!(!c.on_event(&ev(d), ms(10 * (i as u64 + 1))).unwrap());
        }
        assert!(c.on_event(&ev("[DONE]"), ms(100)).unwrap());
        let r = &c.rec;
        assert_eq!(r.chunks, vec![ms(20), ms(30), ms(40)]);
        assert_eq!(r.e2el, ms(60));
        assert_eq!((r.usage_tokens, r.prompt_tokens), (Some(4), Some(7)));
        assert_eq!(r.cached_tokens, Some(5));
        assert_eq!(r.output_tokens(), 4);
        assert!(c.finished);
    }

    #[test]
    fn errors_in_streams() {
        let mut c = Collector::default();
        let e = c.on_event(&ev("{not json"), ms(1)).unwrap_err();
        assert!(matches!(e, Failure::Stream(m) if m.contains("malformed")));
        let e = c
            .on_event(&ev(r#"{"error":{"message":"boom","code":500}}"#), ms(1))
            .unwrap_err();
        assert_eq!(e, Failure::Stream("boom".into()));
        let llama = Event {
            name: "error".into(),
            data: r#"{"code":500,"message":"slot failed"}"#.into(),
        };
        assert_eq!(
            c.on_event(&llama, ms(1)).unwrap_err(),
            Failure::Stream("slot failed".into())
        );
        // Odd but valid JSON is ignored, not fatal.
        assert!(!c.on_event(&ev(r#"[1,2]"#), ms(1)).unwrap());
        assert!(!c.on_event(&ev(r#"{"choices":"x"}"#), ms(1)).unwrap());
        assert!(c.rec.chunks.is_empty());
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(r#"{"error":{"message":"too many","type":"x"}}"#),
            "too many"
        );
        assert_eq!(error_message(r#"{"error":"busy"}"#), "busy");
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_message("  plain text\n"), "plain text");
        assert_eq!(error_message(&"é".repeat(300)).chars().count(), 201);
    }

    #[test]
    fn bodies_per_endpoint() {
        let mut t = Target {
            url: String::new(),
            endpoint: Endpoint::Chat,
            model: "m".into(),
            api_key: None,
            max_tokens: 8,
            temperature: 0.0,
            timeout: ms(1),
        };
        let b = body(&t, &Prompt::Text("hi".into()));
        assert_eq!(b["messages"][0]["content"], "hi");
        assert_eq!(b["max_tokens"], 8);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert!(b.get("prompt").is_none());
        t.endpoint = Endpoint::Completions;
        let b = body(&t, &Prompt::Text("hi".into()));
        assert_eq!(b["prompt"], "hi");
        assert!(b.get("messages").is_none());
    }
}
