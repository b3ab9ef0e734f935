//! The summary of one concurrency level, with vLLM's definitions (`vllm bench serve`):
//!
//! - TTFT: from sending a request to its first content chunk.
//! - TPOT: per request, (E2EL − TTFT) / (output tokens − 1), for requests of more than one token.
//! - ITL: every gap between consecutive content chunks, all requests pooled.
//! - E2EL: from sending a request to its last chunk.
//! - Throughputs: totals over the level's wall time (first request sent to last one finished).
//!
//! Percentiles interpolate linearly between the closest ranks (numpy's default).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::RequestRecord;
use super::metrics::Acceptance;

/// Mean, median and 99th percentile, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub p99: f64,
}

/// The `p`th percentile (0 to 100) of sorted values, interpolating between ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// None for no values.
pub fn summarize(mut v: Vec<f64>) -> Option<Summary> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Summary {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        median: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
    })
}

/// What one concurrency level measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    pub concurrency: usize,
    pub completed: usize,
    pub failed: usize,
    /// Failed requests per cause: `http 429`, `http 500`, `timeout`, `connection`, `stream`.
    pub failures: BTreeMap<String, usize>,
    /// The first few distinct failure messages.
    pub errors: Vec<String>,
    pub duration_s: f64,
    /// Prompt tokens of the completed requests, when the server reported them all.
    pub input_tokens: Option<usize>,
    /// Of those, the ones served from the server's prefix cache, when it reported them all.
    pub cached_input_tokens: Option<usize>,
    pub output_tokens: usize,
    /// Completed requests whose output tokens are their content chunks (no usage sent).
    pub tokens_from_chunks: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    /// (input + output tokens) per second, when input tokens are known.
    pub total_token_throughput: Option<f64>,
    pub ttft_ms: Option<Summary>,
    pub tpot_ms: Option<Summary>,
    pub itl_ms: Option<Summary>,
    pub e2el_ms: Option<Summary>,
    /// From the server's vLLM spec-decode counters, when it exports them.
    pub acceptance: Option<Acceptance>,
    /// With a price per hour: dollars per million output tokens at this throughput.
    pub usd_per_million_output_tokens: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Latency summaries of the completed requests: TTFT, TPOT, ITL, E2EL.
pub fn latencies(ok: &[&RequestRecord]) -> [Option<Summary>; 4] {
    let ttft = ok.iter().filter_map(|r| r.ttft()).map(ms).collect();
    let tpot = ok
        .iter()
        .filter(|r| r.output_tokens() > 1)
        .filter_map(|r| {
            let t = r.ttft()?;
            Some(ms(r.e2el.saturating_sub(t)) / (r.output_tokens() - 1) as f64)
        })
        .collect();
    let itl = ok
        .iter()
        .flat_map(|r| r.chunks.windows(2).map(|w| ms(w[1].saturating_sub(w[0]))))
        .collect();
    let e2el = ok.iter().map(|r| ms(r.e2el)).collect();
    [ttft, tpot, itl, e2el].map(summarize)
}

/// The level's summary (acceptance and cost are filled in by the caller).
pub fn level(concurrency: usize, records: &[RequestRecord], duration: Duration) -> Level {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let mut failures = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    for f in records.iter().filter_map(|r| r.error.as_ref()) {
        *failures.entry(f.key()).or_insert(0) += 1;
        let d = f.describe();
        if errors.len() < 5 && !errors.contains(&d) {
            errors.push(d);
        }
    }
    let secs = duration.as_secs_f64().max(1e-9);
    let output_tokens: usize = ok.iter().map(|r| r.output_tokens()).sum();
    let input_tokens = ok
        .iter()
        .map(|r| r.prompt_tokens)
        .sum::<Option<usize>>()
        .filter(|_| !ok.is_empty());
    let cached_input_tokens = ok
        .iter()
        .map(|r| r.cached_tokens)
        .sum::<Option<usize>>()
        .filter(|_| !ok.is_empty());
    let [ttft_ms, tpot_ms, itl_ms, e2el_ms] = latencies(&ok);
    Level {
        concurrency,
        completed: ok.len(),
        failed: records.len() - ok.len(),
        failures,
        errors,
        duration_s: duration.as_secs_f64(),
        input_tokens,
        cached_input_tokens,
        output_tokens,
        tokens_from_chunks: ok.iter().filter(|r| r.usage_tokens.is_none()).count(),
        request_throughput: ok.len() as f64 / secs,
        output_throughput: output_tokens as f64 / secs,
        total_token_throughput: input_tokens.map(|i| (i + output_tokens) as f64 / secs),
        ttft_ms,
        tpot_ms,
        itl_ms,
        e2el_ms,
        acceptance: None,
        usd_per_million_output_tokens: None,
    }
}

/// Dollars per million output tokens for a machine costing `price_per_hour`.
pub fn usd_per_million(price_per_hour: f64, output_throughput: f64) -> Option<f64> {
    (output_throughput > 0.0).then(|| price_per_hour / (output_throughput * 3600.0) * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::client::Failure;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn rec(
        chunks: &[u64],
        e2el: u64,
        usage: Option<usize>,
        prompt: Option<usize>,
    ) -> RequestRecord {
        RequestRecord {
            chunks: chunks.iter().map(|&m| d(m)).collect(),
            e2el: d(e2el),
            usage_tokens: usage,
            prompt_tokens: prompt,
            cached_tokens: prompt.map(|p| p / 2),
            error: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!(close(percentile(&v, 99.0), 3.97));
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let s = summarize(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.mean, s.median), (2.5, 2.5));
        assert_eq!(summarize(vec![]), None);
    }

    #[test]
    fn a_level_by_hand() {
        let records = vec![
            // TTFT 100, ITL 20 and 30, E2EL 160, usage 4 tokens: TPOT (160-100)/3 = 20.
            rec(&[100, 120, 150], 160, Some(4), Some(10)),
            // TTFT 200, ITL 50, E2EL 250, no usage: 2 tokens, TPOT 50/1 = 50.
            rec(&[200, 250], 250, None, Some(6)),
            // One token: TTFT 300, no TPOT, no ITL.
            rec(&[300], 300, Some(1), Some(5)),
            RequestRecord::failed(
                Failure::Status {
                    code: 429,
                    message: "busy".into(),
                },
                d(5),
            ),
            RequestRecord::failed(Failure::Timeout, d(900)),
            RequestRecord::failed(
                Failure::Status {
                    code: 429,
                    message: "busy".into(),
                },
                d(5),
            ),
        ];
        let l = level(2, &records, d(2000));
        assert_eq!((l.completed, l.failed), (3, 3));
        assert_eq!(l.failures["http 429"], 2);
        assert_eq!(l.failures["timeout"], 1);
        assert_eq!(l.errors, vec!["http 429: busy", "timeout"]);
        assert_eq!((l.output_tokens, l.tokens_from_chunks), (7, 1));
        assert_eq!(l.input_tokens, Some(21));
        // Half of each prompt cached (by `rec`): 5 + 3 + 2.
        assert_eq!(l.cached_input_tokens, Some(10));
        assert!(close(l.request_throughput, 1.5));
        assert!(close(l.output_throughput, 3.5));
        assert!(close(l.total_token_throughput.unwrap(), 14.0));
        let ttft = l.ttft_ms.unwrap();
        assert!(close(ttft.mean, 200.0) && close(ttft.median, 200.0));
        assert!(close(ttft.p99, 298.0));
        let tpot = l.tpot_ms.unwrap();
        assert!(close(tpot.mean, 35.0) && close(tpot.median, 35.0));
        assert!(close(tpot.p99, 49.7));
        let itl = l.itl_ms.unwrap();
        assert!(close(itl.mean, 100.0 / 3.0) && close(itl.median, 30.0));
        assert!(close(itl.p99, 49.6));
        let e2el = l.e2el_ms.unwrap();
        assert!(close(e2el.mean, 710.0 / 3.0) && close(e2el.median, 250.0));
    }

    #[test]
    fn unknown_input_tokens_and_an_empty_level() {
        let l = level(1, &[rec(&[10], 10, Some(1), None)], d(1000));
        assert_eq!((l.input_tokens, l.total_token_throughput), (None, None));
        assert_eq!(l.cached_input_tokens, None);
        let l = level(1, &[RequestRecord::failed(Failure::Timeout, d(1))], d(1000));
        assert_eq!((l.completed, l.output_tokens, l.ttft_ms), (0, 0, None));
        assert_eq!(l.input_tokens, None);
    }

    #[test]
    fn cost_per_million_tokens() {
        // $3.6/h at 100 tokens/s: 360,000 tokens per hour, $10 per million.
        assert!(close(usd_per_million(3.6, 100.0).unwrap(), 10.0));
        assert_eq!(usd_per_million(3.6, 0.0), None);
    }
}
