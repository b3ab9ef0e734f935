//! `cascade bench serve`'s runner against a mock OpenAI-compatible server on 127.0.0.1: canned
//! SSE streams with known delays, error answers, malformed and unfinished streams, a request
//! that hangs, and vLLM's spec-decode counters on /metrics.
//!
//! The prompt says what the mock does: `ok` (5 content chunks `DELAY` apart, each written in two
//! halves, then usage), `nousage`, `e500`, `e429`, `malformed`, `early` (closes without
//! `[DONE]`), `hang`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use cascade_bench::serve::{self, Endpoint, Prompt, ServeBench};

const DELAY_MS: u64 = 10;
const CHUNKS: usize = 5;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
}

fn start_mock() -> (SocketAddr, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let c = counters.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(handle(s, c.clone()));
            }
        });
    });
    (rx.recv().unwrap(), counters)
}

/// Reads one request: its first line and its body.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let first = head.lines().next().unwrap_or("").to_string();
    Some((first, buf[head_end..head_end + len].to_vec()))
}

async fn answer(s: &mut TcpStream, status: &str, kind: &str, body: &str) {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(r.as_bytes()).await;
}

async fn handle(mut s: TcpStream, c: Arc<Counters>) {
    let Some((first, body)) = read_request(&mut s).await else {
        return;
    };
    if first.starts_with("GET /v1/models") {
        let models = r#"{"object":"list","data":[{"id":"mock-model"}]}"#;
        return answer(&mut s, "200 OK", "application/json", models).await;
    }
    if first.starts_with("GET /metrics") {
        let n = c.requests.load(Ordering::SeqCst);
        let page = format!(
            "# TYPE vllm:spec_decode_num_drafts_total counter\n\
             vllm:spec_decode_num_drafts_total{{engine=\"0\"}} {}\n\
             vllm:spec_decode_num_draft_tokens_total{{engine=\"0\"}} {}\n\
             vllm:spec_decode_num_accepted_tokens_total{{engine=\"0\"}} {}\n",
            2 * n,
            8 * n,
            6 * n
        );
        return answer(&mut s, "200 OK", "text/plain", &page).await;
    }
    let chat = first.starts_with("POST /v1/chat/completions");
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let well_formed = req["model"] == "mock-model"
        && req["stream"] == true
        && req["max_tokens"] == CHUNKS
        && req["stream_options"]["include_usage"] == true;
    if !(well_formed && (chat || first.starts_with("POST /v1/completions"))) {
        let e = r#"{"error":{"message":"bad request"}}"#;
        return answer(&mut s, "400 Bad Request", "application/json", e).await;
    }
    let prompt = if chat {
        req["messages"][0]["content"].as_str()
    } else {
        req["prompt"].as_str()
    };
    stream(&mut s, prompt.unwrap_or(""), chat, &c).await;
}

fn chunk(chat: bool, text: &str) -> String {
    let v = if chat {
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    } else {
        json!({"choices": [{"index": 0, "text": text, "finish_reason": null}]})
    };
    format!("data: {v}\n\n")
}

async fn stream(s: &mut TcpStream, prompt: &str, chat: bool, c: &Counters) {
    let e = |m: &str| json!({"error": {"message": m}}).to_string();
    match prompt {
        "e500" => {
            return answer(
                s,
                "500 Internal Server Error",
                "application/json",
                &e("mock failure"),
            )
            .await
        }
        "e429" => return answer(s, "429 Too Many Requests", "application/json", &e("busy")).await,
        _ => {}
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    let _ = s.write_all(head.as_bytes()).await;
    let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
    let _ = s
        .write_all(format!(": comment\n\ndata: {role}\n\n").as_bytes())
        .await;
    let half = Duration::from_millis(DELAY_MS / 2);
    match prompt {
        "malformed" => {
            let _ = s.write_all(b"data: {broken\n\n\xff\xfe\n\n").await;
            return;
        }
        "early" => {
            let _ = s.write_all(chunk(chat, "x").as_bytes()).await;
            return;
        }
        "hang" => {
            let _ = s.write_all(chunk(chat, "x").as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        _ => {}
    }
    for i in 0..CHUNKS {
        let text = chunk(chat, &format!("t{i} "));
        let (a, b) = text.split_at(text.len() / 2);
        tokio::time::sleep(half).await;
        let _ = s.write_all(a.as_bytes()).await;
        tokio::time::sleep(half).await;
        let _ = s.write_all(b.as_bytes()).await;
    }
    let fin =
        json!({"choices": [{"index": 0, "delta": {}, "text": "", "finish_reason": "length"}]});
    let _ = s.write_all(format!("data: {fin}\n\n").as_bytes()).await;
    if prompt != "nousage" {
        let usage =
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": CHUNKS}});
        let _ = s
            .write_all(format!("data: {usage}\r\n\r\n").as_bytes())
            .await;
    }
    c.requests.fetch_add(1, Ordering::SeqCst);
    let _ = s.write_all(b"data: [DONE]\n\n").await;
}

fn bench(
    addr: SocketAddr,
    prompts: &[&str],
    concurrency: Vec<usize>,
    requests: usize,
) -> ServeBench {
    ServeBench {
        url: format!("http://{addr}/v1/"),
        model: None,
        model_fallback: None,
        api_key: Some("k".into()),
        endpoint: Endpoint::Chat,
        prompts: prompts
            .iter()
            .map(|p| Prompt::Text(p.to_string()))
            .collect(),
        concurrency,
        requests,
        max_tokens: CHUNKS,
        temperature: 0.0,
        warmup: 0,
        request_rate: None,
        timeout: Duration::from_secs(20),
        price_per_hour: None,
        seed: 1,
    }
}

#[test]
fn streamed_levels_are_timed_and_counted() {
    let (addr, _) = start_mock();
    let mut cfg = bench(addr, &["ok"], vec![1, 3], 6);
    cfg.warmup = 1;
    cfg.price_per_hour = Some(3.6);
    let mut seen = Vec::new();
    let report = serve::run_with(&cfg, &mut |l| seen.push(l.concurrency)).unwrap();
    assert_eq!(seen, vec![1, 3]);
    assert_eq!(report.settings.model, "mock-model");
    assert_eq!(report.settings.url, format!("http://{addr}"));
    let d = DELAY_MS as f64;
    for l in &report.levels {
        assert_eq!((l.completed, l.failed), (6, 0), "{l:?}");
        assert_eq!((l.output_tokens, l.tokens_from_chunks), (30, 0));
        assert_eq!(l.input_tokens, Some(18));
        let (ttft, itl, tpot, e2el) = (
            l.ttft_ms.unwrap(),
            l.itl_ms.unwrap(),
            l.tpot_ms.unwrap(),
            l.e2el_ms.unwrap(),
        );
        assert!(ttft.median >= 0.9 * d && ttft.median < 50.0 * d, "{ttft:?}");
        assert!(itl.median >= 0.8 * d && itl.p99 < 50.0 * d, "{itl:?}");
        assert!(tpot.median >= 0.8 * d && tpot.mean < 50.0 * d, "{tpot:?}");
        assert!(e2el.median >= 0.9 * CHUNKS as f64 * d, "{e2el:?}");
        let a = l.acceptance.expect("acceptance from /metrics");
        assert_eq!(
            (a.drafts, a.draft_tokens, a.accepted_tokens),
            (12.0, 48.0, 36.0)
        );
        assert_eq!((a.acceptance_rate, a.mean_accepted_length), (0.75, 4.0));
        let cost = l.usd_per_million_output_tokens.unwrap();
        assert!((cost - 1000.0 / l.output_throughput).abs() < 1e-6 * cost);
        assert!((l.output_throughput - 30.0 / l.duration_s).abs() < 1e-9);
    }
    // Three in flight finish the same requests faster than one.
    assert!(report.levels[1].duration_s < report.levels[0].duration_s);
    // The report survives a JSON round trip (`--svg-with` reads it back), up to the last digit.
    let back: serve::Report =
        serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back.settings, report.settings);
    for (a, b) in back.levels.iter().zip(&report.levels) {
        assert_eq!(
            (a.completed, a.output_tokens),
            (b.completed, b.output_tokens)
        );
        let (x, y) = (a.tpot_ms.unwrap().median, b.tpot_ms.unwrap().median);
        assert!((x - y).abs() < 1e-9 * y);
    }
}

#[test]
fn failures_are_counted_by_cause() {
    let (addr, _) = start_mock();
    let prompts = ["ok", "e500", "e429", "malformed", "early", "nousage"];
    let report = serve::run(&bench(addr, &prompts, vec![2], 12)).unwrap();
    let l = &report.levels[0];
    assert_eq!((l.completed, l.failed), (4, 8), "{l:?}");
    assert_eq!(l.failures["http 500"], 2);
    assert_eq!(l.failures["http 429"], 2);
    assert_eq!(l.failures["stream"], 4);
    assert!(
        l.errors.iter().any(|e| e == "http 500: mock failure"),
        "{:?}",
        l.errors
    );
    assert!(l.errors.iter().any(|e| e.contains("malformed")));
    assert!(l.errors.iter().any(|e| e.contains("without [DONE]")));
    assert_eq!((l.output_tokens, l.tokens_from_chunks), (20, 2));
    // Two requests without usage: input tokens unknown.
    assert_eq!(l.input_tokens, None);
}

#[test]
fn completions_endpoint() {
    let (addr, _) = start_mock();
    let mut cfg = bench(addr, &["ok"], vec![2], 2);
    cfg.endpoint = Endpoint::Completions;
    cfg.model = Some("mock-model".into());
    cfg.request_rate = Some(50.0);
    let l = &serve::run(&cfg).unwrap().levels[0];
    assert_eq!((l.completed, l.output_tokens), (2, 10), "{l:?}");
}

#[test]
fn hung_requests_time_out() {
    let (addr, _) = start_mock();
    let mut cfg = bench(addr, &["hang"], vec![2], 2);
    cfg.timeout = Duration::from_millis(300);
    let l = &serve::run(&cfg).unwrap().levels[0];
    assert_eq!((l.completed, l.failures["timeout"]), (0, 2), "{l:?}");
    assert!(l.duration_s < 5.0);
}

#[test]
fn an_absent_server_fails_cleanly() {
    let port = cascade_bench::serve::server::free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cfg = bench(addr, &["ok"], vec![1], 2);
    let e = serve::run(&cfg).unwrap_err();
    assert!(e.to_string().contains("/v1/models"), "{e}");
    cfg.model = Some("m".into());
    let l = &serve::run(&cfg).unwrap().levels[0];
    assert_eq!(l.failures["connection"], 2);
    cfg.warmup = 1;
    let e = serve::run(&cfg).unwrap_err();
    assert!(
        e.to_string().contains("every warm-up request failed"),
        "{e}"
    );
}
