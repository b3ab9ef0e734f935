//! `cascade serve` over HTTP on a fixture model: every error status in OpenAI's shape,
//! completions and chat whole and streamed, stop strings, 429 on a full queue, and a clean exit
//! on SIGTERM.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cascade::engine::fixture::FixtureSpec;
use harness::{get, post, request, Server};
use serde_json::{json, Value};

const MODEL: &str = "fx";
const KEY: &str = "sekret";

fn fixture(dir: &Path, context_length: usize) -> PathBuf {
    let spec = FixtureSpec {
        context_length,
        ..FixtureSpec::default()
    };
    common::write_fixture(dir, "fx.gguf", &spec)
}

fn completion(extra: Value) -> String {
    let mut v = json!({"model": MODEL, "prompt": "the cat", "max_tokens": 24, "temperature": 0,
                       "ignore_eos": true});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v.to_string()
}

/// The text and last chunk of a streamed completion or chat.
fn stream_text(chunks: &[String]) -> (String, Vec<Value>) {
    assert_eq!(
        chunks.last().map(String::as_str),
        Some("[DONE]"),
        "{chunks:?}"
    );
    let objs: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let mut text = String::new();
    for o in &objs {
        if let Some(c) = o["choices"].get(0) {
            text += c["text"]
                .as_str()
                .or(c["delta"]["content"].as_str())
                .unwrap_or("");
        }
    }
    (text, objs)
}

#[test]
fn errors_completions_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture(dir.path(), 256);
    let mut s = Server::start(
        &model,
        &[
            "--api-key",
            KEY,
            "--served-model-name",
            MODEL,
            "--threads",
            "1",
            "--max-body-bytes",
            "2048",
        ],
    );
    check_open_routes(&s);
    check_errors(&s);
    let text = check_completions(&s);
    check_chat(&s);
    check_stop_strings(&s, &text);
    let metrics = get(&s.addr, "/metrics", None).body;
    assert!(
        metrics.contains("cascade:http_requests_total{status=\"401\"}"),
        "{metrics}"
    );
    let (status, took) = s.terminate(Duration::from_secs(12));
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

fn check_open_routes(s: &Server) {
    let h = get(&s.addr, "/health", None);
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    let m = get(&s.addr, "/metrics", None);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let r = get(&s.addr, "/v1/models", Some(KEY));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["max_model_len"], 256);
    assert!(v["data"][0]["root"].as_str().unwrap().ends_with("fx.gguf"));
}

fn check_errors(s: &Server) {
    let a = &s.addr;
    let e = get(a, "/v1/models", None).error(401);
    assert_eq!(e["type"], "authentication_error");
    get(a, "/v1/models", Some("wrong")).error(401);
    post(a, "/v1/completions", Some("wrong"), &completion(json!({}))).error(401);

    let e = post(
        a,
        "/v1/completions",
        Some(KEY),
        "{\"model\": \"fx\", \"prompt\": [",
    )
    .error(400);
    assert!(
        e["message"].as_str().unwrap().contains("malformed JSON"),
        "{e}"
    );
    let e = post(
        a,
        "/v1/completions",
        Some(KEY),
        &completion(json!({"max_tokens": "x"})),
    )
    .error(400);
    assert_eq!(e["param"], "max_tokens");
    assert!(e["message"].as_str().unwrap().contains("max_tokens"), "{e}");
    let e = post(
        a,
        "/v1/completions",
        Some(KEY),
        &completion(json!({"max_tokens": 100000})),
    )
    .error(400);
    assert_eq!(e["param"], "max_tokens");
    let e = post(
        a,
        "/v1/completions",
        Some(KEY),
        &completion(json!({"n": 2})),
    )
    .error(400);
    assert_eq!(e["param"], "n");
    let e = post(
        a,
        "/v1/completions",
        Some(KEY),
        &completion(json!({"temperature": -1})),
    )
    .error(400);
    assert_eq!(e["param"], "temperature");
    let e = post(
        a,
        "/v1/completions",
        Some(KEY),
        &completion(json!({"cascade": {"mode": "answer"}})),
    )
    .error(400);
    assert_eq!(e["param"], "cascade.mode", "no draft model: {e}");
    let bad_role = json!({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]});
    let e = post(a, "/v1/chat/completions", Some(KEY), &bad_role.to_string()).error(400);
    assert_eq!(e["param"], "messages[0].role");
    let e = post(a, "/v1/completions", Some(KEY), r#"{"prompt": "x"}"#).error(400);
    assert_eq!(e["param"], "model");

    let e = post(
        a,
        "/v1/completions",
        Some(KEY),
        &completion(json!({"model": "gpt-4"})),
    )
    .error(404);
    assert_eq!(e["code"], "model_not_found");
    get(a, "/v1/nothing", Some(KEY)).error(404);
    get(a, "/nothing", None).error(404);
    get(a, "/v1/completions", Some(KEY)).error(405);
    let big = completion(json!({"prompt": "x".repeat(4096)}));
    request(
        a,
        "POST",
        "/v1/completions",
        Some(KEY),
        Some(big.as_bytes()),
    )
    .error(413);
}

/// Whole and streamed completions agree (greedy); returns the text.
fn check_completions(s: &Server) -> String {
    let r = post(
        &s.addr,
        "/v1/completions",
        Some(KEY),
        &completion(json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 24);
    assert_eq!(
        u["prompt_tokens"].as_u64().unwrap() + 24,
        u["total_tokens"].as_u64().unwrap()
    );
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert_eq!(v["cascade"]["mode"], "target");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();

    let body = completion(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let r = post(&s.addr, "/v1/completions", Some(KEY), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let (streamed, objs) = stream_text(&r.sse());
    assert_eq!(streamed, text);
    let n = objs.len();
    assert!(objs.iter().all(|o| o["object"] == "text_completion"));
    assert_eq!(objs[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(objs[n - 2]["cascade"]["mode"], "target");
    assert_eq!(objs[n - 1]["choices"], json!([]));
    // The same prompt again: all of it but its last token comes from the prefix cache.
    let mut again = u.clone();
    let prompt = u["prompt_tokens"].as_u64().unwrap();
    again["prompt_tokens_details"]["cached_tokens"] = json!(prompt - 1);
    assert_eq!(objs[n - 1]["usage"], again);
    assert!(objs[..n - 1].iter().all(|o| o["usage"].is_null()));
    text
}

fn check_chat(s: &Server) {
    let req = json!({"model": MODEL, "max_completion_tokens": 8, "temperature": 0, "ignore_eos": true,
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
    let r = post(&s.addr, "/v1/chat/completions", Some(KEY), &req.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();

    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let r = post(
        &s.addr,
        "/v1/chat/completions",
        Some(KEY),
        &sreq.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (streamed, objs) = stream_text(&r.sse());
    assert_eq!(streamed, text);
    assert_eq!(objs[0]["object"], "chat.completion.chunk");
    assert_eq!(objs[0]["choices"][0]["delta"]["role"], "assistant");
    let last = objs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(last.get("usage").is_none(), "usage only when asked: {last}");
}

/// A stop string from the middle of the greedy text cuts it there, whole and streamed.
fn check_stop_strings(s: &Server, text: &str) {
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "greedy text too short: {text:?}");
    let stop: String = chars[3..5].iter().collect();
    let expected = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = completion(json!({"stop": [stop, "\u{7}never"], "stream": stream}));
        let r = post(&s.addr, "/v1/completions", Some(KEY), &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let (got, finish) = if stream {
            let (t, objs) = stream_text(&r.sse());
            (
                t,
                objs.last().unwrap()["choices"][0]["finish_reason"].clone(),
            )
        } else {
            let v = r.json();
            let c = &v["choices"][0];
            (
                c["text"].as_str().unwrap().to_string(),
                c["finish_reason"].clone(),
            )
        };
        assert_eq!(got, expected, "stop {stop:?} in {text:?}, stream {stream}");
        assert_eq!(finish, "stop");
    }
}

/// With one running and one waiting, more requests get 429 with Retry-After; SIGTERM with
/// requests in flight still exits 0 in time.
#[test]
fn a_full_queue_answers_429_and_sigterm_ends_running_requests() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture(dir.path(), 4096);
    let mut s = Server::start(
        &model,
        &[
            "--max-queue",
            "1",
            "--max-batch",
            "1",
            "--threads",
            "1",
            "--served-model-name",
            MODEL,
        ],
    );
    let long = completion(json!({"max_tokens": 4000}));
    let mut seen_429 = None;
    let mut handles = Vec::new();
    for _round in 0..5 {
        let batch: Vec<_> = (0..6)
            .map(|_| {
                let (addr, body) = (s.addr.clone(), long.clone());
                std::thread::spawn(move || post(&addr, "/v1/completions", None, &body))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        handles.extend(batch);
        // Requests refused at once have answered by now.
        let (done, pending): (Vec<_>, Vec<_>) = handles.drain(..).partition(|h| h.is_finished());
        handles = pending;
        for h in done {
            let r = h.join().unwrap();
            if r.status == 429 {
                seen_429 = Some(r);
            }
        }
        if seen_429.is_some() {
            break;
        }
    }
    let r = seen_429.expect("no request got 429 with --max-queue 1");
    let e = r.error(429);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    if handles.is_empty() {
        eprintln!("every request ended before SIGTERM: the shutdown ran idle");
    }
    let (status, took) = s.terminate(Duration::from_secs(12));
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took < Duration::from_secs(10), "{took:?}");
    for h in handles {
        let r = h.join().unwrap();
        assert!(
            [200, 429, 503].contains(&r.status),
            "{} {}",
            r.status,
            r.body
        );
    }
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
