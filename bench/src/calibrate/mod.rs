//! `cascade calibrate`: runs an evaluation set through target-only decoding, draft-only decoding,
//! exact speculative decoding and a sweep of cascade rules × α, scores every output, and reports
//! quality against cost: the frontier, and the cheapest setting that keeps a floor of the
//! target's score.

pub mod eval;
pub mod frontier;
pub mod svg;

use std::time::{Duration, Instant};

use serde::Serialize;

use cascade_engine::{
    Cascade, Engine, GenerateConfig, Message, Mode, Prompt, Request, Rule, SpecConfig,
};

pub use eval::{load, EvalItem, Outcome, Scorer};
pub use frontier::{frontier, recommend};

use crate::error::BenchError;

/// One way of decoding that calibrate measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    Target,
    Draft,
    Exact,
    Cascade(Cascade),
    /// Answer mode, continuing exactly.
    Answer,
}

impl Setting {
    pub fn name(&self) -> String {
        match self {
            Setting::Target => "target".into(),
            Setting::Draft => "draft".into(),
            Setting::Exact => "exact".into(),
            Setting::Cascade(c) => format!("{} α={}", c.rule.name(), c.alpha),
            Setting::Answer => "answer".into(),
        }
    }

    fn mode(&self, spec: SpecConfig) -> Mode {
        match *self {
            Setting::Target => Mode::Target,
            Setting::Draft => Mode::Draft,
            Setting::Exact => Mode::Speculative(SpecConfig {
                cascade: None,
                ..spec
            }),
            Setting::Cascade(c) => Mode::Speculative(SpecConfig {
                cascade: Some(c),
                ..spec
            }),
            Setting::Answer => Mode::Speculative(SpecConfig {
                cascade: None,
                answer: true,
                ..spec
            }),
        }
    }

    /// Target-only, draft-only, exact, then every rule at every α.
    pub fn sweep(rules: &[Rule], alphas: &[f32]) -> Vec<Setting> {
        let mut s = vec![Setting::Target, Setting::Draft, Setting::Exact];
        for &rule in rules {
            for &alpha in alphas {
                s.push(Setting::Cascade(Cascade { rule, alpha }));
            }
        }
        s
    }
}

/// What one setting scored and cost over the evaluation set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SettingResult {
    pub setting: String,
    pub rule: Option<&'static str>,
    pub alpha: Option<f32>,
    pub passed: usize,
    pub items: usize,
    /// Scoring commands that overran their time limit (counted as failures).
    pub timeouts: usize,
    /// `passed / items`.
    pub score: f64,
    pub tokens: usize,
    /// Wall seconds of generation (prefill and decode), scoring excluded.
    pub wall_s: f64,
    pub tokens_per_s: f64,
    pub target_passes: usize,
    pub target_passes_per_token: f64,
    pub target_tokens: usize,
    pub draft_tokens: usize,
    pub target_s: f64,
    pub draft_s: f64,
    /// Seconds per output token relative to target-only decoding (1 = target-only's cost).
    pub cost: f64,
    /// Per item: passed or not, in the evaluation file's order.
    pub outcomes: Vec<bool>,
    /// Answer mode: answers the target kept whole, and drafted / kept answer tokens.
    pub answers_whole: usize,
    pub answer_drafted: usize,
    pub answer_kept: usize,
}

/// How calibrate decodes and scores.
#[derive(Debug, Clone, Copy)]
pub struct CalibrateConfig {
    pub generate: GenerateConfig,
    /// Draft length and proposers of the speculative settings.
    pub spec: SpecConfig,
    /// Time limit of a scoring command.
    pub timeout: Duration,
}

/// Runs every setting over `items`; `progress` is called after each generation.
pub fn run(
    engine: &Engine,
    items: &[EvalItem],
    settings: &[Setting],
    cfg: &CalibrateConfig,
    mut progress: impl FnMut(&str, usize),
) -> Result<Vec<SettingResult>, BenchError> {
    let mut out = Vec::new();
    for setting in settings {
        let name = setting.name();
        let mut r = SettingResult {
            setting: name.clone(),
            rule: match setting {
                Setting::Cascade(c) => Some(c.rule.name()),
                _ => None,
            },
            alpha: match setting {
                Setting::Cascade(c) => Some(c.alpha),
                _ => None,
            },
            items: items.len(),
            ..Default::default()
        };
        for (i, item) in items.iter().enumerate() {
            let req = Request {
                prompt: if item.chat {
                    Prompt::Chat(vec![Message::user(item.prompt.clone())])
                } else {
                    Prompt::Text(item.prompt.clone())
                },
                mode: setting.mode(cfg.spec),
                config: cfg.generate,
                grammar: None,
            };
            let t = Instant::now();
            let c = engine.generate(&req, |_| {})?;
            r.wall_s += t.elapsed().as_secs_f64();
            let s = &c.stats;
            r.tokens += c.tokens.len();
            r.target_passes += s.target_passes;
            r.target_tokens += s.target_tokens;
            r.draft_tokens += s.draft_tokens;
            r.target_s += s.target_s;
            r.draft_s += s.draft_s;
            if *setting == Setting::Answer {
                r.answer_drafted += s.answer_drafted;
                r.answer_kept += s.answer_kept;
                r.answers_whole += (s.answer_kept == s.answer_drafted) as usize;
            }
            let outcome = item.score(&c.text, cfg.timeout);
            r.passed += (outcome == Outcome::Pass) as usize;
            r.timeouts += (outcome == Outcome::Timeout) as usize;
            r.outcomes.push(outcome == Outcome::Pass);
            progress(&name, i + 1);
        }
        r.score = r.passed as f64 / r.items.max(1) as f64;
        r.tokens_per_s = r.tokens as f64 / r.wall_s.max(1e-9);
        r.target_passes_per_token = r.target_passes as f64 / r.tokens.max(1) as f64;
        out.push(r);
    }
    // Cost relative to target-only, per output token.
    let base = out
        .iter()
        .find(|r| r.setting == "target")
        .map(|r| r.wall_s / r.tokens.max(1) as f64);
    for r in &mut out {
        r.cost = match base {
            Some(b) if b > 0.0 => r.wall_s / r.tokens.max(1) as f64 / b,
            _ => f64::NAN,
        };
    }
    Ok(out)
}
