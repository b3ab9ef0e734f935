//! Speculative-decoding acceptance from a server's Prometheus `/metrics`, read before and after
//! a level: vLLM's `vllm:spec_decode_num_drafts`, `vllm:spec_decode_num_draft_tokens` and
//! `vllm:spec_decode_num_accepted_tokens` counters (with or without the `_total` suffix, summed
//! over label sets). Servers without them (llama-server names its own) give no acceptance.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DRAFTS: &str = "vllm:spec_decode_num_drafts";
pub const DRAFT_TOKENS: &str = "vllm:spec_decode_num_draft_tokens";
pub const ACCEPTED: &str = "vllm:spec_decode_num_accepted_tokens";

/// The three counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SpecCounters {
    pub drafts: f64,
    pub draft_tokens: f64,
    pub accepted: f64,
}

/// Acceptance over a level: the counters' differences and what follows from them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Acceptance {
    pub drafts: f64,
    pub draft_tokens: f64,
    pub accepted_tokens: f64,
    /// accepted / drafted tokens.
    pub acceptance_rate: f64,
    /// 1 + accepted / drafts: tokens emitted per verification.
    pub mean_accepted_length: f64,
}

/// A sample line's metric name and value; None for comments and lines it cannot read.
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    if rest.starts_with('{') {
        rest = &rest[labels_end(rest)?..];
    }
    let value = rest.split_whitespace().next()?;
    Some((name, value.parse().ok()?))
}

/// The index just past the `}` closing a label set, skipping quoted values.
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The counters in a Prometheus text page, if all three are there.
pub fn parse(text: &str) -> Option<SpecCounters> {
    let (mut c, mut seen) = (SpecCounters::default(), [false; 3]);
    for (name, v) in text.lines().filter_map(sample) {
        let base = name.strip_suffix("_total").unwrap_or(name);
        let (slot, i) = match base {
            DRAFTS => (&mut c.drafts, 0),
            DRAFT_TOKENS => (&mut c.draft_tokens, 1),
            ACCEPTED => (&mut c.accepted, 2),
            _ => continue,
        };
        *slot += v;
        seen[i] = true;
    }
    (seen == [true; 3]).then_some(c)
}

/// Acceptance between two readings; None unless both exist and tokens were drafted between.
pub fn acceptance(before: Option<SpecCounters>, after: Option<SpecCounters>) -> Option<Acceptance> {
    let (b, a) = (before?, after?);
    let drafts = a.drafts - b.drafts;
    let draft_tokens = a.draft_tokens - b.draft_tokens;
    let accepted = a.accepted - b.accepted;
    if draft_tokens <= 0.0 || drafts <= 0.0 || accepted < 0.0 {
        return None;
    }
    Some(Acceptance {
        drafts,
        draft_tokens,
        accepted_tokens: accepted,
        acceptance_rate: accepted / draft_tokens,
        mean_accepted_length: 1.0 + accepted / drafts,
    })
}

/// Reads the server's counters; None on any failure (no `/metrics`, other names, a timeout).
pub async fn scrape(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
) -> Option<SpecCounters> {
    let mut req = client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(10));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    parse(&resp.text().await.ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="a}b \"q\""} 5
vllm:spec_decode_num_drafts_created{engine="0"} 1.7e9
vllm:spec_decode_num_draft_tokens_total{engine="0"} 60 1700000000000
vllm:spec_decode_num_accepted_tokens 45
vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 9
garbage line {
vllm:num_requests_running 3
"#;

    #[test]
    fn reads_vllm_counters() {
        let c = parse(PAGE).unwrap();
        assert_eq!(
            c,
            SpecCounters {
                drafts: 15.0,
                draft_tokens: 60.0,
                accepted: 45.0
            }
        );
    }

    #[test]
    fn missing_counters_give_nothing() {
        assert_eq!(parse("llamacpp:n_drafted_total 5\n"), None);
        assert_eq!(parse(""), None);
        let no_accepted: String = PAGE
            .lines()
            .filter(|l| !l.starts_with("vllm:spec_decode_num_accepted_tokens "))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse(&no_accepted), None);
    }

    #[test]
    fn acceptance_from_differences() {
        let b = SpecCounters {
            drafts: 10.0,
            draft_tokens: 40.0,
            accepted: 20.0,
        };
        let a = SpecCounters {
            drafts: 30.0,
            draft_tokens: 120.0,
            accepted: 80.0,
        };
        let x = acceptance(Some(b), Some(a)).unwrap();
        assert_eq!(x.acceptance_rate, 0.75);
        assert_eq!(x.mean_accepted_length, 4.0);
        assert_eq!(acceptance(Some(a), Some(a)), None);
        assert_eq!(acceptance(None, Some(a)), None);
    }
}
