//! A request becoming a running sequence.

use cascade_weights::StreamDecoder;

use crate::engine::{Mode, Role};
use crate::generate::GenerateStats;
use crate::sampler::Sampler;
use crate::speculative::{Counters, Proposal};

use super::kv::SeqBlocks;
use super::seq::{AnswerPhase, DraftKv, Seq, SpecState};
use super::step::StepLoop;
use super::{metrics as m, Job};

/// A sequence for `job`, holding `kv` (with a cached prefix of `kv.len` positions) in its
/// model's pool and `draft` in the draft model's (speculative modes).
pub(crate) fn new_seq(
    l: &mut StepLoop,
    mut job: Job,
    role: Role,
    kv: SeqBlocks,
    draft: Option<SeqBlocks>,
) -> Seq {
    metrics::counter!(m::PREFIX_QUERIES).increment(job.prompt.len() as u64);
    metrics::counter!(m::PREFIX_HITS).increment(kv.len as u64);
    let sampling = job.req.config.sampling;
    let spec = match job.req.mode {
        Mode::Speculative(cfg) => {
            let (ctrl_lookup, ctrl_model) = l.memory.controllers(&cfg, &sampling);
            let kmax = cfg.draft_len.max();
            Some(SpecState {
                cfg,
                lookup: cfg.lookup,
                draft: draft.map(|b| DraftKv {
                    fed: job.prompt[..b.len].to_vec(),
                    blocks: b,
                    vocab: Vec::new(),
                }),
                ctrl_lookup,
                ctrl_model,
                cascade: cfg.cascade.filter(|c| !c.is_exact()),
                plain_streak: 0,
                probe_every: super::round::PROBE_EVERY,
                probing: false,
                probe_due: false,
                counters: Counters::new(kmax),
                answer: cfg.answer.then(|| AnswerPhase::Writing {
                    answer: Proposal::default(),
                    done: false,
                }),
            })
        }
        _ => None,
    };
    Seq {
        role,
        context: job.prompt.clone(),
        prompt_len: job.prompt.len(),
        cached_tokens: kv.len,
        kv,
        sampler: Sampler::new(sampling),
        spec,
        stream: StreamDecoder::new(),
        text: String::new(),
        tokens: Vec::new(),
        stats: GenerateStats::default(),
        first_at: None,
        last_at: None,
        stop: None,
        constraint: job.constraint.take(),
        ahead: None,
        failure: None,
        job,
    }
}
