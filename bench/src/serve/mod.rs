//! `cascade bench serve`: a load generator for any OpenAI-compatible server (ours, llama.cpp's
//! `llama-server`, vLLM), after `vllm bench serve`. For each concurrency level it sends
//! `requests` streamed requests, at most `concurrency` in flight (and, with a request rate, as
//! Poisson arrivals), and reports throughput and TTFT / TPOT / ITL / E2EL (see [`stats`]),
//! acceptance from vLLM's spec-decode counters when the server exports them, and the cost per
//! million output tokens at a price per hour.

pub mod client;
pub mod metrics;
pub mod prompts;
pub mod server;
pub mod sse;
pub mod stats;
pub mod svg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use client::{Endpoint, Failure, RequestRecord, Target};
pub use prompts::Prompt;
pub use stats::{Level, Summary};

use crate::error::BenchError;

/// Limits on the settings, so that no setting makes the runner allocate without bound.
pub const MAX_CONCURRENCY: usize = 100_000;
pub const MAX_REQUESTS: usize = 10_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct ServeBench {
    /// The server's base URL, with or without `/v1`.
    pub url: String,
    /// The model to ask for; None: the first id of `GET /v1/models`.
    pub model: Option<String>,
    /// Used when `model` is None and `/v1/models` gives no id.
    pub model_fallback: Option<String>,
    pub api_key: Option<String>,
    pub endpoint: Endpoint,
    pub prompts: Vec<Prompt>,
    pub concurrency: Vec<usize>,
    /// Requests per level (prompts taken round-robin from the first).
    pub requests: usize,
    pub max_tokens: usize,
    pub temperature: f64,
    /// Requests sent (and not counted) before the first level.
    pub warmup: usize,
    /// Poisson arrivals at this many requests per second; None: all at once.
    pub request_rate: Option<f64>,
    pub timeout: Duration,
    pub price_per_hour: Option<f64>,
    /// Seed of the arrival times.
    pub seed: u64,
}

/// The settings as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub prompts: usize,
    pub concurrency: Vec<usize>,
    pub requests: usize,
    pub max_tokens: usize,
    pub temperature: f64,
    pub warmup: usize,
    /// None: infinite (every request is sent at once, the concurrency caps them).
    pub request_rate: Option<f64>,
    pub timeout_s: f64,
    pub price_per_hour: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub settings: Settings,
    pub levels: Vec<Level>,
}

impl ServeBench {
    /// Refuses settings that cannot run.
    pub fn check(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Settings(m.into()));
        if self.concurrency.is_empty() || self.concurrency.contains(&0) {
            return bad("concurrency levels must be at least 1");
        }
        if self.concurrency.iter().any(|&c| c > MAX_CONCURRENCY) {
            return bad(&format!(
                "concurrency levels above {MAX_CONCURRENCY} are not supported"
            ));
        }
        if self.requests == 0 || self.max_tokens == 0 {
            return bad("requests and max tokens must be at least 1");
        }
        if self.requests > MAX_REQUESTS {
            return bad(&format!("at most {MAX_REQUESTS} requests per level"));
        }
        if self.prompts.is_empty() {
            return bad("no prompts");
        }
        if self.request_rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return bad("the request rate must be positive");
        }
        if self.timeout.is_zero() {
            return bad("the timeout must be positive");
        }
        let conversations = self
            .prompts
            .iter()
            .any(|p| matches!(p, Prompt::Messages(_)));
        if self.endpoint == Endpoint::Completions && conversations {
            return bad("prompts with `messages` need the chat endpoint");
        }
        Ok(())
    }
}

/// The base URL without a trailing `/` or `/v1`.
pub fn base_url(url: &str) -> String {
    let u = url.trim().trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

/// Runs every level.
pub fn run(cfg: &ServeBench) -> Result<Report, BenchError> {
    run_with(cfg, &mut |_| {})
}

/// Runs every level, calling `on_level` as each ends.
pub fn run_with(cfg: &ServeBench, on_level: &mut dyn FnMut(&Level)) -> Result<Report, BenchError> {
    cfg.check()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    rt.block_on(run_async(cfg, on_level))
}

async fn run_async(
    cfg: &ServeBench,
    on_level: &mut dyn FnMut(&Level),
) -> Result<Report, BenchError> {
    let base = base_url(&cfg.url);
    let client = client::http_client().map_err(|reason| BenchError::Http {
        url: base.clone(),
        reason,
    })?;
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => match first_model(&client, &base, cfg.api_key.as_deref()).await {
            Ok(m) => m,
            Err(e) => cfg.model_fallback.clone().ok_or(e)?,
        },
    };
    let target = Arc::new(Target {
        url: format!("{base}{}", cfg.endpoint.path()),
        endpoint: cfg.endpoint,
        model: model.clone(),
        api_key: cfg.api_key.clone(),
        max_tokens: cfg.max_tokens,
        temperature: cfg.temperature,
        timeout: cfg.timeout,
    });
    let mut runner = Runner {
        client,
        target,
        prompts: Arc::new(cfg.prompts.clone()),
        rng: cfg.seed,
    };
    if cfg.warmup > 0 {
        runner.warm_up(cfg.warmup, cfg.concurrency[0]).await?;
    }
    let mut levels = Vec::new();
    for &c in &cfg.concurrency {
        let level = runner.level(cfg, &base, c).await;
        on_level(&level);
        levels.push(level);
    }
    Ok(Report {
        settings: settings(cfg, base, model),
        levels,
    })
}

fn settings(cfg: &ServeBench, url: String, model: String) -> Settings {
    Settings {
        url,
        model,
        endpoint: cfg.endpoint,
        prompts: cfg.prompts.len(),
        concurrency: cfg.concurrency.clone(),
        requests: cfg.requests,
        max_tokens: cfg.max_tokens,
        temperature: cfg.temperature,
        warmup: cfg.warmup,
        request_rate: cfg.request_rate,
        timeout_s: cfg.timeout.as_secs_f64(),
        price_per_hour: cfg.price_per_hour,
    }
}

/// The first model id of `GET /v1/models`.
async fn first_model(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
) -> Result<String, BenchError> {
    let url = format!("{base}/v1/models");
    let fail = |reason: String| BenchError::Http {
        url: url.clone(),
        reason,
    };
    let mut req = client.get(&url).timeout(Duration::from_secs(30));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| fail(client::error_chain(&e)))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| fail(client::error_chain(&e)))?;
    if !status.is_success() {
        return Err(fail(format!("{status}: {}", client::error_message(&text))));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| fail("no model id in the answer; pass --model".into()))
}

/// What the levels share.
struct Runner {
    client: reqwest::Client,
    target: Arc<Target>,
    prompts: Arc<Vec<Prompt>>,
    /// The arrival times' generator state.
    rng: u64,
}

impl Runner {
    async fn warm_up(&mut self, n: usize, concurrency: usize) -> Result<(), BenchError> {
        let (records, _) = self.send_all(n, concurrency, None).await;
        match records.iter().find_map(|r| r.error.as_ref()) {
            Some(e) if records.iter().all(|r| !r.ok()) => Err(BenchError::Http {
                url: self.target.url.clone(),
                reason: format!("every warm-up request failed: {}", e.describe()),
            }),
            _ => Ok(()),
        }
    }

    async fn level(&mut self, cfg: &ServeBench, base: &str, c: usize) -> Level {
        let key = cfg.api_key.as_deref();
        let before = metrics::scrape(&self.client, base, key).await;
        let (records, duration) = self.send_all(cfg.requests, c, cfg.request_rate).await;
        let after = metrics::scrape(&self.client, base, key).await;
        let mut level = stats::level(c, &records, duration);
        level.acceptance = metrics::acceptance(before, after);
        level.usd_per_million_output_tokens = cfg
            .price_per_hour
            .and_then(|p| stats::usd_per_million(p, level.output_throughput));
        level
    }

    /// Sends `n` requests, at most `concurrency` in flight; returns them and the wall time.
    async fn send_all(
        &mut self,
        n: usize,
        concurrency: usize,
        rate: Option<f64>,
    ) -> (Vec<RequestRecord>, Duration) {
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        let start = Instant::now();
        for i in 0..n {
            if let (Some(r), true) = (rate, i > 0) {
                tokio::time::sleep(self.next_gap(r)).await;
            }
            let (client, target) = (self.client.clone(), self.target.clone());
            let (prompts, slots) = (self.prompts.clone(), slots.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await;
                client::send(&client, &target, &prompts[i % prompts.len()]).await
            });
        }
        let mut records = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            records.push(r.unwrap_or_else(|e| {
                RequestRecord::failed(Failure::Connection(e.to_string()), Duration::ZERO)
            }));
        }
        (records, start.elapsed())
    }

    /// An exponential gap between arrivals at `rate` per second (splitmix64 draws).
    fn next_gap(&mut self, rate: f64) -> Duration {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        // At most a day, however low the rate.
        Duration::from_secs_f64((-(1.0 - u).ln() / rate).min(86_400.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for u in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            " http://h:1/v1/ ",
        ] {
            assert_eq!(base_url(u), "http://h:1");
        }
    }

    fn bench() -> ServeBench {
        ServeBench {
            url: "http://127.0.0.1:1".into(),
            model: Some("m".into()),
            model_fallback: None,
            api_key: None,
            endpoint: Endpoint::Chat,
            prompts: vec![Prompt::Text("hi".into())],
            concurrency: vec![1, 2],
            requests: 4,
            max_tokens: 8,
            temperature: 0.0,
            warmup: 0,
            request_rate: None,
            timeout: Duration::from_secs(1),
            price_per_hour: None,
            seed: 0,
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(bench().check().is_ok());
        let mut b = bench();
        b.concurrency = vec![1, 0];
        assert!(b.check().is_err());
        let mut b = bench();
        b.request_rate = Some(0.0);
        assert!(b.check().is_err());
        let mut b = bench();
        b.concurrency = vec![usize::MAX];
        assert!(b.check().is_err());
        let mut b = bench();
        b.requests = usize::MAX;
        assert!(b.check().is_err());
        let mut b = bench();
        b.endpoint = Endpoint::Completions;
        b.prompts = vec![Prompt::Messages(vec![])];
        assert!(b.check().unwrap_err().to_string().contains("chat"));
    }

    #[test]
    fn arrival_gaps_average_one_over_the_rate() {
        let mut r = Runner {
            client: reqwest::Client::new(),
            target: Arc::new(client::Target {
                url: String::new(),
                endpoint: Endpoint::Chat,
                model: String::new(),
                api_key: None,
                max_tokens: 1,
                temperature: 0.0,
                timeout: Duration::from_secs(1),
            }),
            prompts: Arc::new(vec![]),
            rng: 7,
        };
        let n = 20_000;
        let mean = (0..n).map(|_| r.next_gap(4.0).as_secs_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.25).abs() < 0.01, "{mean}");
    }
}
