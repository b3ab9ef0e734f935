//! The `Engine`: what users embed. It owns the weight store, the target and an optional draft
//! (both mapped through the one store), and a thread pool sized by the caller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cascade_gpu::DeviceSpec;
use cascade_weights::{OpenOptions, WeightStore};

use crate::chat::{self, Message};
use crate::error::{EngineError, Result};
use crate::fastcopy::RepackPolicy;
use crate::generate::{GenerateConfig, GenerateStats, StopReason};
use crate::model::{Model, Precision};
use crate::perplexity::{perplexity, PerplexityResult};
use crate::scheduler::{
    CancelToken, EventSink, RequestHandle, Scheduler, SchedulerConfig, SchedulerStats,
};
use crate::speculative::{verify, Cascade, Rule, SpecConfig, VerifyFn};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// A `.gguf` file or a Hugging Face folder.
    pub target: PathBuf,
    pub draft: Option<PathBuf>,
    /// A `tokenizer.json` to use instead of the models' own tokenizers.
    pub tokenizer: Option<PathBuf>,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// How activations enter the matrix products (default: 8-bit integer).
    pub precision: Precision,
    /// Batching, queueing and KV memory.
    pub scheduler: SchedulerConfig,
    /// Whether GGUF models are mapped through their repacked copy (made once, on first load).
    pub repack: RepackPolicy,
    /// Where the target runs (`auto`: a GPU when one is present and it fits, else the CPU).
    pub device: DeviceSpec,
    /// Where the draft runs.
    pub draft_device: DeviceSpec,
    /// How much of the vocabulary the draft's output layer computes (FR-Spec). Exactness is
    /// unaffected: the target verifies every token.
    pub draft_vocab: DraftVocab,
    /// The frequency ranking for `draft_vocab` (default: the one this build ships for the
    /// draft's tokenizer).
    pub vocab_rank: Option<PathBuf>,
}

/// The draft's output layer: the whole vocabulary, or only its most frequent tokens (FR-Spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DraftVocab {
    /// [`DraftVocab::AUTO_TOKENS`] most frequent tokens when a ranking exists for the draft's
    /// tokenizer (shipped, or given as `vocab_rank`) and its vocabulary is larger; else all.
    #[default]
    Auto,
    /// The whole vocabulary.
    All,
    /// The `n` most frequent tokens (an error without a ranking for the tokenizer).
    Top(usize),
}

impl DraftVocab {
    /// The size `Auto` takes. On the 20 code prompts (128 tokens, exact `auto`, 2 threads,
    /// `bench/results/2026-12-02-spec-code-vocab.txt`) it made the draft step cheaper and raised
    /// exact speculation from 1.26x to 1.38x target-only (per-prompt medians), every output
    /// identical; 16k lost acceptance, 64k kept most of the cost (2026-12-01's sizes).
    pub const AUTO_TOKENS: usize = 32768;

    /// The output-layer size to restrict the draft to, given whether a ranking for its tokenizer
    /// is at hand and its vocabulary size (`None`: the whole vocabulary).
    pub fn tokens(self, ranked: bool, vocab: usize) -> Option<usize> {
        match self {
            DraftVocab::All => None,
            DraftVocab::Top(n) => Some(n),
            DraftVocab::Auto => (ranked && vocab > Self::AUTO_TOKENS).then_some(Self::AUTO_TOKENS),
        }
    }
}

impl std::str::FromStr for DraftVocab {
    type Err = String;

    /// `auto`, `all` (or 0), or a token count.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DraftVocab::Auto),
            "all" | "0" => Ok(DraftVocab::All),
            n => n
                .parse()
                .map(DraftVocab::Top)
                .map_err(|_| format!("{s:?}: expected `auto`, `all` or a number of tokens")),
        }
    }
}

impl std::fmt::Display for DraftVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DraftVocab::Auto => f.write_str("auto"),
            DraftVocab::All => f.write_str("all"),
            DraftVocab::Top(n) => write!(f, "{n}"),
        }
    }
}

/// Which loaded model runs a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Target,
    Draft,
}

#[derive(Debug, Clone)]
pub enum Prompt {
    /// Used verbatim (special tokens written in it are parsed).
    Text(String),
    /// Rendered with the model's chat template, ending with the assistant's turn.
    Chat(Vec<Message>),
    Tokens(Vec<u32>),
}

/// How a request decodes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Mode {
    /// The target alone.
    #[default]
    Target,
    /// The draft alone (for comparison: cheapest, not the target's quality).
    Draft,
    /// Speculative decoding: exact (lossless), cascade (a deferral rule) or answer-level.
    Speculative(SpecConfig),
}

impl Mode {
    /// Exact speculative decoding: prompt lookup, then the draft model; adaptive draft length.
    pub fn exact() -> Mode {
        Mode::Speculative(SpecConfig::default())
    }

    /// A speculative cascade with `rule` at lenience `alpha`.
    pub fn cascade(rule: Rule, alpha: f32) -> Mode {
        Mode::Speculative(SpecConfig {
            cascade: Some(Cascade { rule, alpha }),
            ..SpecConfig::default()
        })
    }

    /// The draft writes the whole answer; the target scores it in one pass and generation
    /// continues from the first rejected token, exactly (`None`) or with a cascade rule.
    pub fn answer(cascade: Option<Cascade>) -> Mode {
        Mode::Speculative(SpecConfig {
            cascade,
            answer: true,
            ..SpecConfig::default()
        })
    }

    /// `target`, `draft`, `exact`, `cascade` or `answer`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Target => "target",
            Mode::Draft => "draft",
            Mode::Speculative(s) if s.answer => "answer",
            Mode::Speculative(s) if s.cascade.is_some() => "cascade",
            Mode::Speculative(_) => "exact",
        }
    }

    /// The model whose tokens (and tokenizer) the request uses.
    pub fn role(&self) -> Role {
        match self {
            Mode::Draft => Role::Draft,
            Mode::Target | Mode::Speculative(_) => Role::Target,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub mode: Mode,
    pub config: GenerateConfig,
    /// What the output must match (constrained decoding); `None`: free text.
    pub grammar: Option<crate::constraint::Grammar>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries came from the prefix cache instead of a forward pass.
    pub cached_tokens: usize,
    pub stop: StopReason,
    pub stats: GenerateStats,
}

/// The loaded models and what their requests share; the scheduler thread holds one too.
pub(crate) struct Shared {
    pub(crate) store: WeightStore,
    pub(crate) target: Model,
    pub(crate) draft: Option<Model>,
    pub(crate) pool: rayon::ThreadPool,
    /// The verifier every round and answer accepts with (tests substitute a broken one).
    pub(crate) verify: VerifyFn,
    /// The tables grammars compile against, built by the first constrained request.
    pub(crate) grammars: std::sync::OnceLock<std::sync::Arc<crate::constraint::Grammars>>,
}

impl Shared {
    /// The grammar tables of the target's tokenizer (which a draft shares), built once.
    pub(crate) fn grammars(&self) -> Result<std::sync::Arc<crate::constraint::Grammars>> {
        if let Some(g) = self.grammars.get() {
            return Ok(g.clone());
        }
        let built = std::sync::Arc::new(crate::constraint::Grammars::new(&self.target.tokenizer)?);
        Ok(self.grammars.get_or_init(|| built).clone())
    }
}

/// A draft must share the target's tokenizer; when the two are identical one copy is kept.
fn check_pair(target: &Model, d: &mut Model) -> Result<()> {
    if let Some(detail) = target.tokenizer.first_difference(&d.tokenizer) {
        return Err(EngineError::TokenizerMismatch { detail });
    }
    if d.tokenizer.n_vocab() == target.tokenizer.n_vocab() {
        d.tokenizer = target.tokenizer.clone();
        d.files.tokenizer = target.tokenizer.clone();
    }
    Ok(())
}

/// Restricts the draft's output layer to the `n` most frequent tokens of its ranking.
fn restrict_draft(d: &mut Model, vocab: DraftVocab, rank: Option<&std::path::Path>) -> Result<()> {
    use crate::speculative::vocab::{fingerprint, VocabRank};
    if vocab == DraftVocab::All {
        return Ok(());
    }
    let rank = match rank {
        Some(p) => Some(VocabRank::load(p)?),
        None => VocabRank::shipped(fingerprint(&d.tokenizer)),
    };
    let Some(n) = vocab.tokens(rank.is_some(), d.vocab_size()) else {
        return Ok(());
    };
    let rank = rank.ok_or(EngineError::InvalidParam {
        name: "draft vocabulary",
        reason: "no shipped frequency ranking for the draft's tokenizer; build one with \
                 `cascade vocab-rank` and pass it with --vocab-rank"
            .into(),
    })?;
    let ids = rank.subset(&d.tokenizer, n)?;
    d.restrict_output(&ids)?;
    tracing::info!(
        "draft output layer: {} of {} tokens",
        d.output_tokens(),
        d.vocab_size()
    );
    Ok(())
}

/// What users embed: the models, and the scheduler thread that runs every request submitted to
/// it in one batch per step.
pub struct Engine {
    shared: Arc<Shared>,
    scheduler: Scheduler,
    /// Seconds spent opening and mapping the models.
    pub load_s: f64,
}

impl Engine {
    pub fn load(cfg: &EngineConfig) -> Result<Engine> {
        let t0 = Instant::now();
        let store = WeightStore::new();
        let opts = OpenOptions {
            tokenizer_json: cfg.tokenizer.clone(),
        };
        let fast = |p: &std::path::Path| crate::fastcopy::fast_path(p, &cfg.repack);
        let mut target = Model::load(&store, &fast(&cfg.target), &opts)?;
        target.set_precision(cfg.precision);
        let mut draft = match &cfg.draft {
            Some(p) => {
                let mut d = Model::load(&store, &fast(p), &opts)?;
                d.set_precision(cfg.precision);
                check_pair(&target, &mut d)?;
                Some(d)
            }
            None => None,
        };
        if let Some(d) = draft.as_mut() {
            restrict_draft(d, cfg.draft_vocab, cfg.vocab_rank.as_deref())?;
        }
        crate::placement::place_models(
            &mut target,
            cfg.device,
            draft.as_mut(),
            cfg.draft_device,
            &cfg.scheduler,
        )?;
        let mut e = Engine::with_models(store, target, draft, cfg.threads, cfg.scheduler)?;
        e.load_s = t0.elapsed().as_secs_f64();
        Ok(e)
    }

    /// An engine over models the caller loaded from `store` and prepared (placed on a device
    /// with `Model::place_on`, a draft's output layer restricted): what [`Engine::load`] does
    /// after its own loading. `threads`: the CPU kernels' pool (`None`: every core).
    pub fn with_models(
        store: WeightStore,
        target: Model,
        draft: Option<Model>,
        threads: Option<usize>,
        scheduler: SchedulerConfig,
    ) -> Result<Engine> {
        let verify: VerifyFn = verify::<ChaCha8Rng>;
        Engine::build(store, (target, draft), threads, scheduler, verify)
    }

    /// [`Engine::with_models`] whose rounds accept with `verify` (tests: a broken verifier
    /// must fail the distribution test).
    #[cfg(test)]
    pub(crate) fn with_verifier(
        store: WeightStore,
        (target, draft): (Model, Option<Model>),
        scheduler: SchedulerConfig,
        verify: VerifyFn,
    ) -> Result<Engine> {
        Engine::build(store, (target, draft), Some(2), scheduler, verify)
    }

    fn build(
        store: WeightStore,
        (target, draft): (Model, Option<Model>),
        threads: Option<usize>,
        scheduler: SchedulerConfig,
        verify: VerifyFn,
    ) -> Result<Engine> {
        let mut draft = draft;
        if let Some(d) = draft.as_mut() {
            check_pair(&target, d)?;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(0))
            .build()
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        let shared = Arc::new(Shared {
            store,
            target,
            draft,
            pool,
            verify,
            grammars: std::sync::OnceLock::new(),
        });
        let scheduler = Scheduler::start(shared.clone(), scheduler)?;
        Ok(Engine {
            shared,
            scheduler,
            load_s: 0.0,
        })
    }

    pub fn store(&self) -> &WeightStore {
        &self.shared.store
    }

    pub fn target(&self) -> &Model {
        &self.shared.target
    }

    pub fn draft(&self) -> Option<&Model> {
        self.shared.draft.as_ref()
    }

    pub fn model(&self, role: Role) -> Result<&Model> {
        self.shared.model(role)
    }

    /// Runs `f` on the engine's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.shared.pool.install(f)
    }

    /// The prompt as token ids for `role`'s model.
    pub fn encode(&self, role: Role, prompt: &Prompt) -> Result<Vec<u32>> {
        self.shared.encode(role, prompt)
    }

    /// Queues a request for the scheduler; its events arrive on the handle (dropping it cancels
    /// the request). Refuses with [`EngineError::QueueFull`] past the queue bound, and checks the
    /// prompt (template, length, KV budget) before queueing it.
    pub fn submit(&self, req: Request) -> Result<RequestHandle> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let cancel = CancelToken::default();
        let id = self
            .scheduler
            .submit(&self.shared, req, Box::new(tx), cancel.clone())?;
        Ok(RequestHandle {
            id,
            events: rx,
            cancel,
        })
    }

    /// [`Engine::submit`] delivering the events to `sink` (which must not block); cancel through
    /// the token returned (or by returning false from the sink).
    pub fn submit_with(
        &self,
        req: Request,
        sink: Box<dyn EventSink>,
    ) -> Result<(u64, CancelToken)> {
        let cancel = CancelToken::default();
        let id = self
            .scheduler
            .submit(&self.shared, req, sink, cancel.clone())?;
        Ok((id, cancel))
    }

    /// The scheduler's state now.
    pub fn stats(&self) -> SchedulerStats {
        self.scheduler.stats()
    }

    /// The scheduler's settings.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        self.scheduler.config()
    }

    /// Stops taking requests, cancels what is queued or running, and waits for the scheduler
    /// thread (also done on drop).
    pub fn shutdown(&self) {
        self.scheduler.shutdown();
    }

    /// Generates a completion through the scheduler (a batch of one unless other requests run);
    /// `on_text` receives the text as it becomes complete UTF-8.
    pub fn generate(&self, req: &Request, on_text: impl FnMut(&str) + Send) -> Result<Completion> {
        self.submit(req.clone())?.wait(on_text)
    }

    /// Perplexity of `text` under `role`'s model with windows of `ctx` tokens.
    pub fn perplexity(
        &self,
        role: Role,
        text: &str,
        ctx: usize,
        on_window: impl FnMut(usize, usize, f64) + Send,
    ) -> Result<PerplexityResult> {
        let model = self.model(role)?;
        let ids = model.tokenizer.encode(text, true)?;
        self.install(|| perplexity(model, &ids, ctx, on_window))
    }
}

/// The longest prompt text a model with `context` positions is given to tokenize: 32 bytes a
/// position (real text averages about 4), and at least 1 MiB. Longer text could not fit the
/// context, and tokenizing it would only spend time.
pub fn prompt_byte_limit(context: usize) -> usize {
    context.saturating_mul(32).max(1 << 20)
}

impl Shared {
    pub(crate) fn model(&self, role: Role) -> Result<&Model> {
        match role {
            Role::Target => Ok(&self.target),
            Role::Draft => self.draft.as_ref().ok_or(EngineError::NoDraft),
        }
    }

    /// The prompt as token ids for `role`'s model.
    pub(crate) fn encode(&self, role: Role, prompt: &Prompt) -> Result<Vec<u32>> {
        let model = self.model(role)?;
        let tok = &model.tokenizer;
        let limit = prompt_byte_limit(model.config.context_length);
        let bytes = match prompt {
            Prompt::Tokens(_) => 0,
            Prompt::Text(text) => text.len(),
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
        };
        if bytes > limit {
            return Err(EngineError::Limit {
                what: "the prompt's text in bytes",
                limit: limit as u64,
            });
        }
        let ids = match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => tok.encode(text, true)?,
            Prompt::Chat(messages) => {
                let tmpl = tok
                    .chat_template
                    .as_deref()
                    .ok_or(EngineError::NoChatTemplate)?;
                let name = |id: Option<u32>| {
                    id.map(|i| String::from_utf8_lossy(tok.token_bytes(i)).into_owned())
                };
                let bos = name(tok.bos).unwrap_or_default();
                let eos = name(tok.eos).unwrap_or_default();
                let text = chat::render(tmpl, messages, &bos, &eos)?;
                // A template that writes the BOS token itself must not get a second one.
                let add_bos = bos.is_empty() || !text.starts_with(&bos);
                tok.encode(&text, add_bos)?
            }
        };
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod draft_vocab_tests {
    use super::DraftVocab;

    #[test]
    fn auto_restricts_only_a_large_ranked_vocabulary() {
        assert_eq!(DraftVocab::Auto.tokens(true, 151_936), Some(32_768));
        assert_eq!(DraftVocab::Auto.tokens(false, 151_936), None);
        assert_eq!(DraftVocab::Auto.tokens(true, 32_768), None);
        assert_eq!(DraftVocab::All.tokens(true, 151_936), None);
        assert_eq!(DraftVocab::Top(100).tokens(false, 50), Some(100));
    }

    #[test]
    fn parses_and_prints() {
        for (s, v) in [
            ("auto", DraftVocab::Auto),
            ("all", DraftVocab::All),
            ("0", DraftVocab::All),
            ("16384", DraftVocab::Top(16_384)),
        ] {
            assert_eq!(s.parse::<DraftVocab>(), Ok(v), "{s}");
        }
        assert!("lots".parse::<DraftVocab>().is_err());
        assert!("-3".parse::<DraftVocab>().is_err());
        assert_eq!(DraftVocab::Top(7).to_string(), "7");
        assert_eq!(DraftVocab::Auto.to_string(), "auto");
    }
}
