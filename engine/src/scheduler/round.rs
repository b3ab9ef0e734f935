//! One step of the batch: plan every running sequence's rows, draft, run the forwards, verify,
//! accept and emit. The verifier is the same pure function the single-request loop uses.

use std::time::Instant;

use crate::engine::Role;
use crate::error::Result;
use crate::generate::GenerateStats;
use crate::model::{Logits, Model, Outputs, Reduce, Rows, SeqInput};
use crate::sampler::Distribution;
use crate::sampler::SamplingParams;
use crate::speculative::{DraftLen, DraftProbs, Judge, Proposal, VerifyFn};

use super::answer::{self, TargetWork};
use super::grammar;
use super::kv::BlockPool;
use super::metrics as m;
use super::plan::{could_pay, plan, Candidate, StepCosts};
use super::seq::Seq;
use super::step::StepLoop;

/// After this many plain rounds a sequence drafts one token to re-measure acceptance.
pub(crate) const PROBE_EVERY: usize = 16;

/// While streams decode, prompt chunks may make a step at most this many times as long as the
/// decode rows alone would take (measured costs), so arriving prompts do not stall the streams:
/// the inter-token latency's tail stays within a small multiple of its median.
const PREFILL_STALL: f64 = 2.0;

/// A draft model more than this many tokens behind its sequence (its prompt, or what it missed
/// while lookup or plain decoding ran) catches up in chunks of [`WARM_CHUNK`] before it drafts;
/// the plan weighs that one-off cost spread over the tokens the request can be expected to have
/// left. A draft that would not pay is never fed the prompt at all. Less behind, it catches up
/// in its first drafting forward, whose rows the plan prices.
const CATCHUP_MAX: usize = WARM_CHUNK;
const WARM_CHUNK: usize = 32;

/// How much lower prompt lookup's first-position acceptance may be than the draft model's for
/// its match still to be tried first (it costs no draft forward).
const LOOKUP_EDGE: f64 = 0.1;

/// A probe may warm a draft model up (feed it the backlog) only when the request can be expected
/// to run at least this many more tokens ([`expected_remaining`]).
const PROBE_WARM_MIN: usize = 48;

/// The longest interval between probes: each probe that finds nothing accepted doubles the
/// interval up to this, so a proposer that does not pay costs ever less re-measuring.
const PROBE_MAX: usize = 256;

/// A sequence's rows in one forward: its index, the tokens fed, the logits wanted.
type Feed = (usize, Vec<u32>, Logits);

/// Where a candidate's drafts come from.
enum Offer {
    Lookup(Vec<u32>),
    Model,
    /// The draft model, once it has caught up on this many tokens.
    Warm(usize),
}

/// What one sequence does this step.
enum Work {
    /// Prompt positions `start..end`; the last chunk samples the first token.
    Prefill { start: usize, end: usize },
    /// A decode step (`proposal` empty) or a verification of `proposal`; `warm` tokens of the
    /// context go into the draft model's blocks this step (it is brought up to date before it
    /// drafts, a chunk per step).
    Round {
        proposal: Proposal,
        source: Source,
        warm: usize,
    },
    /// Answer mode: positions `start..end` of the prompt and the answer, scored.
    Score { start: usize, end: usize },
    /// Nothing this step (a prompt waiting for budget).
    Wait,
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Plain,
    Lookup,
    Model,
}

pub(crate) struct Round;

impl Round {
    pub fn run(l: &mut StepLoop) -> Result<()> {
        let t0 = Instant::now();
        let mut work = plan_work(l);
        let t_draft = Instant::now();
        draft(l, &mut work)?;
        let draft_s = t_draft.elapsed().as_secs_f64();
        let t_fwd = Instant::now();
        let shared = l.shared.clone();
        let rows = main_forward(l, &mut work, Role::Target, &shared.target)?;
        if let Some(d) = &shared.draft {
            main_forward(l, &mut work, Role::Draft, d)?;
        }
        let fwd_s = t_fwd.elapsed().as_secs_f64();
        for s in &mut l.running {
            s.stats.draft_s += draft_s;
            s.stats.verify_s += fwd_s;
            s.stats.target_s += fwd_s;
        }
        let total = t0.elapsed().as_secs_f64();
        let other = (total - draft_s - fwd_s).max(0.0);
        l.costs.overhead = 0.7 * l.costs.overhead + 0.3 * other;
        metrics::histogram!(m::BATCH_SEQUENCES).record(l.running.len() as f64);
        metrics::histogram!(m::BATCH_ROWS).record(rows as f64);
        Ok(())
    }
}

/// Decode and verification rows first (with draft lengths from the plan), then prompt chunks up
/// to the step's token budget.
fn plan_work(l: &mut StepLoop) -> Vec<Work> {
    let block = l.cfg.block_size;
    let decoding = l.running.iter().filter(|s| !s.prefilling()).count();
    let mut cands = Vec::new();
    let mut who = Vec::new();
    let mut lookups = Vec::new();
    let costs = StepCosts {
        target: &l.costs.target,
        draft: &l.costs.draft,
        overhead: l.costs.overhead,
        draft_prior: l.costs.draft_prior,
    };
    for (i, s) in l.running.iter().enumerate() {
        if s.prefilling() || s.role != Role::Target {
            continue;
        }
        if let Some((c, found)) = candidate(s, block, &costs) {
            cands.push(c);
            who.push(i);
            lookups.push(found);
        }
    }
    let max_extra = l.cfg.step_tokens.saturating_sub(decoding);
    let ks = plan(&cands, decoding - cands.len(), decoding, max_extra, &costs);
    tracing::trace!(
        "plan: {:?} for {:?}; target 1 row {:?}, draft 1 row {:?}",
        ks,
        cands
            .iter()
            .map(|c| (c.max, c.costly, c.setup, c.alphas.first().copied()))
            .collect::<Vec<_>>(),
        costs.target.cost(1),
        costs.draft_cost(1)
    );
    let mut work: Vec<Work> = l
        .running
        .iter()
        .map(|s| {
            if s.prefilling() {
                Work::Wait
            } else {
                Work::Round {
                    proposal: Proposal::default(),
                    source: Source::Plain,
                    warm: 0,
                }
            }
        })
        .collect();
    let mut used = decoding;
    for ((&i, &k), found) in who.iter().zip(&ks).zip(lookups) {
        used += k;
        let sp = l.running[i]
            .spec
            .as_mut()
            .expect("candidates are speculative");
        let due = sp.probe_due || sp.plain_streak >= sp.probe_every;
        match found {
            // A probe that first warms the draft up stays due until it drafts.
            Offer::Warm(_) if k > 0 => sp.probe_due = due,
            _ if k > 0 => {
                sp.probing = due;
                sp.probe_due = false;
            }
            _ => {}
        }
        sp.plain_streak = if k == 0 { sp.plain_streak + 1 } else { 0 };
        if k == 0 {
            continue;
        }
        work[i] = match found {
            Offer::Lookup(tokens) => Work::Round {
                proposal: Proposal {
                    probs: vec![DraftProbs::Point; k],
                    tokens: tokens[..k].to_vec(),
                    ..Proposal::default()
                },
                source: Source::Lookup,
                warm: 0,
            },
            // The draft model fills the proposal (k tokens asked for).
            Offer::Model => Work::Round {
                proposal: Proposal {
                    catch_up: k,
                    ..Proposal::default()
                },
                source: Source::Model,
                warm: 0,
            },
            // Worth drafting: bring the draft up to date first, a chunk per step.
            Offer::Warm(backlog) => {
                used -= k;
                Work::Round {
                    proposal: Proposal::default(),
                    source: Source::Plain,
                    warm: backlog.min(WARM_CHUNK),
                }
            }
        };
    }
    let mut budget = prefill_budget(l, decoding, used);
    let vocab = l.shared.target.vocab_size();
    for (s, w) in l.running.iter_mut().zip(&mut work) {
        if s.answering() {
            let whole = s.reduce(vocab, true) == Reduce::Logits;
            *w = match answer::target_work(s, budget, whole) {
                Some(TargetWork::Prefill { start, end }) => Work::Prefill { start, end },
                Some(TargetWork::Score { start, end }) => Work::Score { start, end },
                None => Work::Wait,
            };
            if let Work::Prefill { start, end } | Work::Score { start, end } = w {
                budget -= *end - *start;
            }
            continue;
        }
        if s.prefilling() && budget > 0 {
            let start = s.kv.len;
            let end = s.prompt_len.min(start + budget);
            budget -= end - start;
            *w = Work::Prefill { start, end };
        }
    }
    work
}

/// Prompt rows this step may carry on top of `used` decode and verification rows: what is left of
/// the step's token budget, and while `decoding` sequences stream, no more than keeps the step
/// within [`PREFILL_STALL`] times the decode rows' own cost (at least one row, so prompts always
/// advance).
fn prefill_budget(l: &StepLoop, decoding: usize, used: usize) -> usize {
    let left = l.cfg.step_tokens.saturating_sub(used);
    if decoding == 0 {
        return left;
    }
    let Some(base) = l.costs.target.cost(used) else {
        return left;
    };
    let fits = |r: usize| {
        l.costs
            .target
            .cost(used + r)
            .is_some_and(|t| t <= PREFILL_STALL * base)
    };
    (1..=left)
        .take_while(|&r| fits(r))
        .last()
        .unwrap_or(1.min(left))
}

/// A speculative sequence's options: prompt lookup's continuation when it finds one (free) and
/// its matches have been accepted about as often as the draft model's tokens, else the draft
/// model (once caught up). `None` when it cannot draft at all.
fn candidate(s: &Seq, block: usize, costs: &StepCosts) -> Option<(Candidate, Offer)> {
    let sp = s.spec.as_ref()?;
    let room = s.draft_room(block).min(sp.cfg.draft_len.max());
    // A weak lookup match must not displace a better draft model: a round is one or the other.
    let lookup_first =
        sp.draft.is_none() || sp.ctrl_lookup.alpha_at(0) + LOOKUP_EDGE >= sp.ctrl_model.alpha_at(0);
    let found = sp
        .lookup
        .filter(|_| lookup_first)
        .map(|n| n.lookup(&s.context, room))
        .filter(|t| !t.is_empty());
    let (ctrl, max, offer) = match (found, &sp.draft) {
        (Some(t), _) => (&sp.ctrl_lookup, t.len(), Offer::Lookup(t)),
        (None, Some(d)) => {
            // Everything but the newest token, which the drafting forward itself feeds.
            let backlog = s.context.len() - 1 - keep(&d.fed, &s.context);
            let offer = if backlog >= CATCHUP_MAX {
                Offer::Warm(backlog)
            } else {
                Offer::Model
            };
            (&sp.ctrl_model, room, offer)
        }
        (None, None) => return None,
    };
    // Probes re-measure acceptance (and measure it first: without them a proposer estimated
    // not to pay would never be tried). Warming a draft model up for one costs a forward per
    // chunk of the backlog, so that is done only once the answer has shown it is long.
    let due = sp.probe_due || sp.plain_streak >= sp.probe_every;
    let warm_ok = expected_remaining(s) >= PROBE_WARM_MIN;
    let (costly, catch_up, setup) = match offer {
        Offer::Lookup(_) => (false, 0, 0.0),
        Offer::Model => (true, s.context.len() - keep_model(s), 0.0),
        Offer::Warm(backlog) => {
            // The catch-up's cost (a draft forward per chunk), spread over the rounds the
            // request can be expected to have left (about two tokens a round).
            let rounds = (expected_remaining(s) / 2).max(1);
            let chunks = backlog.div_ceil(WARM_CHUNK);
            let once = costs.draft_cost(WARM_CHUNK.min(backlog)).unwrap_or(0.0) * chunks as f64;
            (true, 1, once / rounds as f64)
        }
    };
    let mut c = Candidate {
        alphas: (0..max).map(|i| ctrl.alpha_at(i)).collect(),
        max,
        costly,
        catch_up,
        setup,
        forced: None,
    };
    // A probe costs a catch-up (or a warm-up) and a verification row: only worth it where
    // drafting could pay on this machine's measured costs, the catch-up and the warm-up's share
    // included, even at the acceptance of a draft that nearly always agrees with the target.
    let probe = due && (!matches!(offer, Offer::Warm(_)) || warm_ok) && could_pay(&c, costs);
    c.forced = match sp.cfg.draft_len {
        DraftLen::Fixed(k) => Some(k.min(max)),
        DraftLen::Auto { .. } if probe => Some(1.min(max)),
        DraftLen::Auto { .. } => None,
    };
    Some((c, offer))
}

/// Tokens a request can be expected to generate still: at most what `max_tokens` leaves, and,
/// since most answers end well before it, as many as it has generated so far (an answer that
/// has run n tokens tends to run about n more), at least [`EXPECT_MIN`]. A one-off cost such as
/// warming the draft up on the prompt is thus paid only once the answer shows it is long.
fn expected_remaining(s: &Seq) -> usize {
    let left = s.max_tokens().saturating_sub(s.tokens.len());
    left.min(s.tokens.len().max(EXPECT_MIN))
}

/// The least [`expected_remaining`] assumes of an answer.
const EXPECT_MIN: usize = 16;

fn keep_model(s: &Seq) -> usize {
    let d = s.spec.as_ref().and_then(|sp| sp.draft.as_ref());
    d.map_or(0, |d| keep(&d.fed, &s.context))
}

/// Draft tokens still valid for `context`: the common prefix, leaving at least the last token to
/// feed.
fn keep(fed: &[u32], context: &[u32]) -> usize {
    let common = fed.iter().zip(context).take_while(|(a, b)| a == b).count();
    common.min(context.len() - 1)
}

/// The draft model's part of the step: every drafting sequence's catch-up (and the chunks of
/// sequences warming up, and of answers being written) in the first forward, then one forward
/// per further drafted position over every sequence still drafting.
fn draft(l: &mut StepLoop, work: &mut [Work]) -> Result<()> {
    let shared = l.shared.clone();
    let (Some(model), Some(_)) = (shared.draft.as_ref(), l.draft.as_ref()) else {
        return Ok(());
    };
    let mut d = DraftStep::gather(l, work, model);
    let mut feeds = std::mem::take(&mut d.feeds);
    let mut depth = 0;
    while !feeds.is_empty() {
        let t = Instant::now();
        let top_k = l.draft_top_k;
        let pool = l.draft.as_mut().expect("checked above");
        let bufs = (&mut l.bufs.scratch_d, &mut l.bufs.out_d);
        let rows = forward_feeds(pool, (model, top_k), &mut l.running, &feeds, bufs)?;
        l.costs.draft.observe(rows, t.elapsed().as_secs_f64());
        depth += 1;
        let shapes: Vec<_> = feeds
            .iter()
            .map(|(i, t, w)| {
                let reduce = l.running[*i].reduce(model.vocab_size(), top_k);
                (w.rows(t.len()).len(), reduce)
            })
            .collect();
        shapes.iter().for_each(|&(n, r)| l.logit_rows.count(n, r));
        let parts = l.bufs.out_d.split(shapes, model.vocab_size());
        let mut next = Vec::new();
        for ((i, toks, logits), part) in feeds.iter().zip(parts) {
            let s = &mut l.running[*i];
            s.stats.draft_tokens += toks.len();
            if *logits == Logits::None {
                continue;
            }
            let proposal = match (d.writers[*i].as_mut(), &mut work[*i]) {
                (Some((answer, _)), _) => answer,
                (None, Work::Round { proposal, .. }) => proposal,
                _ => continue,
            };
            if depth == 1 {
                proposal.catch_up = toks.len();
                proposal.computed = toks.len();
            } else {
                proposal.computed += 1;
            }
            let Some(tok) = draft_token(s, part, (&l.both_valid, model), proposal) else {
                d.ended[*i] = true;
                continue;
            };
            let eog = s.job.req.config.stop_at_eog && model.tokenizer.is_eog(tok);
            d.eog[*i] = eog;
            if proposal.len() < d.want[*i] && !eog {
                next.push((*i, vec![tok], Logits::Last));
            }
        }
        feeds = next;
    }
    d.put_back(l);
    Ok(())
}

/// The draft forwards' plan for one step: the first forward's feeds, the tokens each sequence
/// wants drafted, and the answers being written (taken out of their sequences meanwhile).
struct DraftStep {
    feeds: Vec<Feed>,
    want: Vec<usize>,
    /// Per sequence: the answer it is writing and its room.
    writers: Vec<Option<(Proposal, usize)>>,
    /// The newest drafted token ended the generation; a drafted token could not be taken.
    eog: Vec<bool>,
    ended: Vec<bool>,
}

impl DraftStep {
    fn gather(l: &mut StepLoop, work: &[Work], model: &Model) -> DraftStep {
        let n = work.len();
        let mut d = DraftStep {
            feeds: Vec::new(),
            want: vec![0; n],
            writers: (0..n).map(|_| None).collect(),
            eog: vec![false; n],
            ended: vec![false; n],
        };
        let streams = l.running.iter().any(|s| !s.prefilling());
        let deepest = work
            .iter()
            .filter_map(|w| match w {
                Work::Round {
                    proposal,
                    source: Source::Model,
                    ..
                } => Some(proposal.catch_up),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // Beside streams an answer grows as deep as the others draft (at least a token), and
        // its prompt goes in warm-up chunks; alone it writes in bursts.
        let (burst, chunk) = if streams {
            (deepest.max(1), WARM_CHUNK)
        } else {
            (answer::ANSWER_BURST, l.cfg.step_tokens)
        };
        let (block, ctx) = (l.cfg.block_size, l.shared.target.config.context_length);
        for (i, (s, w)) in l.running.iter_mut().zip(work).enumerate() {
            let room = answer::writer_room(s, block, ctx);
            if let Some((toks, last, answer, want)) =
                answer::writer_feed(s, model, (burst, chunk, room))
            {
                let logits = if last { Logits::Last } else { Logits::None };
                d.feeds.push((i, toks, logits));
                d.want[i] = want;
                d.writers[i] = Some((answer, room));
                continue;
            }
            if let Some(feed) = round_feed(s, w, model) {
                if let Work::Round { proposal, .. } = w {
                    d.want[i] = proposal.catch_up;
                }
                d.feeds.push((i, feed.0, feed.1));
            }
        }
        d
    }

    /// Hands every written answer back to its sequence.
    fn put_back(self, l: &mut StepLoop) {
        for (i, w) in self.writers.into_iter().enumerate() {
            if let Some((answer, room)) = w {
                let s = &mut l.running[i];
                answer::writer_done(s, answer, room, self.eog[i], self.ended[i]);
            }
        }
    }
}

/// A drafting (or warming) sequence's first draft feed: its draft blocks rolled back to what
/// the context still shares, then the rest of the context (a warm-up chunk without logits).
fn round_feed(s: &mut Seq, w: &Work, model: &Model) -> Option<(Vec<u32>, Logits)> {
    let d = s.spec.as_mut().and_then(|sp| sp.draft.as_mut())?;
    let Work::Round { source, warm, .. } = w else {
        return None;
    };
    if *source != Source::Model && *warm == 0 {
        return None;
    }
    let kp = keep(&d.fed, &s.context);
    d.fed.truncate(kp);
    d.blocks.len = kp;
    if model.output_tokens() < model.vocab_size() {
        d.vocab.clear();
        d.vocab.extend_from_slice(&s.context);
        d.vocab.sort_unstable();
        d.vocab.dedup();
    }
    Some(if *warm > 0 {
        let end = (kp + warm).min(s.context.len() - 1);
        (s.context[kp..end].to_vec(), Logits::None)
    } else {
        (s.context[kp..].to_vec(), Logits::Last)
    })
}

/// Draws one drafted token from the draft's output `row`, recording the distribution it came
/// from (and, for cascades, the one the rule judges). A greedy choice reduced to its id (on the
/// draft's own valid ids) that the target cannot take ends the proposal: `None`.
fn draft_token(
    s: &mut Seq,
    row: Rows,
    (valid, model): (&[bool], &Model),
    proposal: &mut Proposal,
) -> Option<u32> {
    if s.constraint.is_some() {
        return grammar::draft_token(s, row, valid, proposal, &model.tokenizer);
    }
    draw_draft(s, row, valid, proposal)
}

/// [`draft_token`] on `valid` ids.
pub(super) fn draw_draft(
    s: &mut Seq,
    row: Rows,
    valid: &[bool],
    proposal: &mut Proposal,
) -> Option<u32> {
    let row = match row {
        Rows::Logits(row) => row,
        Rows::Argmax(ids) => {
            let tok = ids[0];
            if !valid.get(tok as usize).copied().unwrap_or(false) {
                return None;
            }
            proposal.probs.push(DraftProbs::Point);
            proposal.tokens.push(tok);
            return Some(tok);
        }
        Rows::TopK { cands, .. } => {
            // Sampled exact drafting (cascades take whole rows): q is the candidates' shaping.
            let sampled = s.sampler.sample_candidates(cands, valid);
            proposal.probs.push(DraftProbs::Dense(sampled.dist));
            proposal.tokens.push(sampled.token);
            return Some(sampled.token);
        }
    };
    let greedy = s.sampler.params.is_greedy();
    let sampled = s.sampler.sample(row, valid);
    if s.spec.as_ref().is_some_and(|sp| sp.cascade.is_some()) {
        proposal.judge.push(if greedy {
            Distribution::from_logits(row, &SamplingParams::untempered(), valid)
        } else {
            sampled.dist.clone()
        });
    }
    proposal.probs.push(if greedy {
        DraftProbs::Point
    } else {
        DraftProbs::Dense(sampled.dist)
    });
    proposal.tokens.push(sampled.token);
    Some(sampled.token)
}

/// One draft forward over `feeds` (sequence index, tokens, logits wanted), each sequence's rows
/// reduced as it asks (`Seq::reduce`), appending the fed tokens to each sequence's draft blocks.
/// Returns the rows run.
fn forward_feeds(
    pool: &mut BlockPool,
    (model, top_k): (&Model, bool),
    running: &mut [Seq],
    feeds: &[Feed],
    (scratch, out): (&mut crate::scratch::Scratch, &mut Outputs),
) -> Result<usize> {
    let inputs: Vec<SeqInput> = feeds
        .iter()
        .map(|(i, toks, want)| {
            let d = running[*i]
                .spec
                .as_ref()
                .and_then(|sp| sp.draft.as_ref())
                .expect("drafting");
            SeqInput {
                tokens: toks,
                table: &d.blocks.table,
                past: d.blocks.len,
                want: *want,
                reduce: running[*i].reduce(model.vocab_size(), top_k),
                extra: &d.vocab,
                prompt: running[*i].prompt_len,
            }
        })
        .collect();
    model.forward_batch(&mut pool.storage, &inputs, scratch, out)?;
    drop(inputs);
    let mut rows = 0;
    for (i, toks, _) in feeds {
        let d = running[*i]
            .spec
            .as_mut()
            .and_then(|sp| sp.draft.as_mut())
            .expect("drafting");
        d.fed.extend_from_slice(toks);
        d.blocks.len += toks.len();
        rows += toks.len();
    }
    Ok(rows)
}

/// The rows `role`'s sequences put into this step's forward: (sequence index, tokens, logits).
fn gather_rows(running: &[Seq], work: &[Work], role: Role) -> Vec<Feed> {
    let mut rows = Vec::new();
    for (i, (s, w)) in running.iter().zip(work).enumerate() {
        if s.role != role {
            continue;
        }
        match w {
            Work::Prefill { start, end } => {
                let want = if *end == s.prompt_len {
                    Logits::Last
                } else {
                    Logits::None
                };
                rows.push((i, s.context[*start..*end].to_vec(), want));
            }
            Work::Round { proposal, .. } => {
                let mut t = vec![*s.context.last().expect("decoding sequences have tokens")];
                t.extend_from_slice(&proposal.tokens);
                rows.push((i, t, Logits::All));
            }
            Work::Score { start, end } => {
                rows.push((i, answer::score_tokens(s, *start, *end), Logits::All));
            }
            Work::Wait => {}
        }
    }
    rows
}

/// The forward of `role`'s model over its sequences' rows (prompt chunks, decode and
/// verification rows), then sampling or verification and emission. Returns the rows run.
fn main_forward(l: &mut StepLoop, work: &mut [Work], role: Role, model: &Model) -> Result<usize> {
    let verify = l.shared.verify;
    let pool = match role {
        Role::Target => &mut l.target,
        Role::Draft => match l.draft.as_mut() {
            Some(p) => p,
            None => return Ok(0),
        },
    };
    let batch = gather_rows(&l.running, work, role);
    if batch.is_empty() {
        return Ok(0);
    }
    // (How rows come back depends on the grammar, which `Ahead` takes out for the forward.)
    let reduce: Vec<Reduce> = batch
        .iter()
        .map(|f| l.running[f.0].reduce(model.vocab_size(), true))
        .collect();
    let ready = ahead_ready(&l.running, work, &batch, model);
    let mut ahead = grammar::Ahead::take(&mut l.running, &ready);
    let inputs: Vec<SeqInput> = batch
        .iter()
        .zip(&reduce)
        .map(|((i, t, want), &reduce)| SeqInput {
            tokens: t,
            table: &l.running[*i].kv.table,
            past: l.running[*i].kv.len,
            want: *want,
            reduce,
            extra: &[],
            prompt: l.running[*i].prompt_len,
        })
        .collect();
    let (scratch, out) = match role {
        Role::Target => (&mut l.bufs.scratch_t, &mut l.bufs.out_t),
        Role::Draft => (&mut l.bufs.scratch_d, &mut l.bufs.out_d),
    };
    let t = Instant::now();
    let done = std::thread::scope(|sc| {
        let side = (!ahead.is_empty()).then(|| sc.spawn(|| ahead.compute()));
        let done = model.forward_batch(&mut pool.storage, &inputs, scratch, out);
        if let Some(h) = side {
            let _ = h.join();
        }
        done
    });
    if let Err(e) = done {
        drop(inputs);
        ahead.put_back(&mut l.running);
        return Err(e);
    }
    let rows: usize = batch.iter().map(|(_, t, _)| t.len()).sum();
    if role == Role::Target {
        l.costs.target.observe(rows, t.elapsed().as_secs_f64());
    }
    let shapes: Vec<_> = inputs
        .iter()
        .map(|q| (q.want.rows(q.tokens.len()).len(), q.reduce))
        .collect();
    shapes.iter().for_each(|&(n, r)| l.logit_rows.count(n, r));
    let parts = out.split(shapes, model.vocab_size());
    drop(inputs);
    ahead.put_back(&mut l.running);
    for ((i, t, _), part) in batch.iter().zip(parts) {
        let w = std::mem::replace(&mut work[*i], Work::Wait);
        apply(&mut l.running[*i], (pool, verify), model, w, t.len(), part);
    }
    Ok(rows)
}

/// The constrained sequences of `batch` whose grammar's next set is known before the forward:
/// a prompt's last chunk, a plain step, or a verification of the draft model's tokens (the
/// grammar consumed them as they were drafted; the set is the bonus row's). Their sets are
/// made beside the forward ([`grammar::Ahead`]).
fn ahead_ready(running: &[Seq], work: &[Work], batch: &[Feed], model: &Model) -> Vec<usize> {
    let ready = |i: usize| {
        let s = &running[i];
        s.constraint.is_some()
            && match &work[i] {
                Work::Prefill { end, .. } => *end == s.prompt_len,
                Work::Round { proposal, .. } => {
                    proposal.allowed.len() == proposal.len()
                        && proposal
                            .tokens
                            .last()
                            .is_none_or(|&t| !model.tokenizer.is_eog(t))
                }
                _ => false,
            }
    };
    batch.iter().map(|f| f.0).filter(|&i| ready(i)).collect()
}

/// The token a plain step takes from its one row: the sampler's draw, or the greedy choice the
/// forward already reduced the row to.
fn next_token(s: &mut Seq, model: &Model, row: Rows) -> Option<u32> {
    if s.constraint.is_some() {
        return grammar::next_token(s, model, row);
    }
    Some(match row {
        Rows::Logits(l) => s.sampler.sample(l, model.valid_mask()).token,
        Rows::Argmax(ids) => ids[0],
        Rows::TopK { cands, .. } => s.sampler.sample_candidates(cands, model.valid_mask()).token,
    })
}

/// One sequence's part of a forward: its blocks now hold `n` more positions; a finished prompt
/// samples its first token, a round samples or verifies; the new tokens are emitted.
fn apply(
    s: &mut Seq,
    (pool, verify): (&mut BlockPool, VerifyFn),
    model: &Model,
    w: Work,
    n: usize,
    rows: Rows,
) {
    s.stats.target_tokens += n;
    let base = s.kv.len;
    s.kv.len += n;
    let new = match w {
        Work::Prefill { end, .. } if end < s.prompt_len => return,
        Work::Prefill { .. } => {
            pool.register(&s.kv, &s.context[..s.prompt_len]);
            next_token(s, model, rows).into_iter().collect()
        }
        Work::Round {
            proposal, source, ..
        } => {
            s.stats.target_passes += 1;
            if s.spec.is_none() {
                next_token(s, model, rows).into_iter().collect()
            } else {
                accept(s, (model, verify), rows, &proposal, source, base)
            }
        }
        Work::Score { start, .. } => answer::score(s, model, rows, start, n),
        Work::Wait => return,
    };
    if new.is_empty() {
        return;
    }
    let cap = (s.kv.table.len() * pool.block()).min(model.config.context_length);
    if !s.emit(model, &new, cap) {
        s.stop = Some(crate::generate::StopReason::Cancelled);
    }
}

/// Verification of one sequence's round: the target's (or the cascade rule's) distributions
/// against the proposal, the blocks rolled back to what was kept; returns the tokens to emit.
fn accept(
    s: &mut Seq,
    (model, verify): (&Model, VerifyFn),
    rows: Rows,
    proposal: &Proposal,
    source: Source,
    base: usize,
) -> Vec<u32> {
    let ahead = s.ahead.take();
    let masks = match s.constraint.as_mut() {
        Some(c) => {
            match grammar::row_masks(c, (proposal, ahead), model.valid_mask(), &model.tokenizer) {
                Ok(m) => Some(m),
                Err(e) => {
                    s.fail(e);
                    return Vec::new();
                }
            }
        }
        None => None,
    };
    let sp = s.spec.as_mut().expect("speculative");
    let judge = Judge {
        target: model,
        cascade: sp.cascade,
        sampling: s.job.req.config.sampling,
    };
    let p = target_dists(
        rows,
        &judge,
        model,
        &proposal.tokens,
        &proposal.judge,
        masks.as_ref().map(|m| &m.rows[..]),
        &mut s.stats,
    );
    let v = verify(&p, &proposal.probs, &proposal.tokens, s.sampler.rng());
    if let (Some(c), Some(m)) = (s.constraint.as_mut(), &masks) {
        if let Err(e) = grammar::settle(c, m.consumed, (v.accepted, v.next), &model.tokenizer) {
            s.fail(e);
            return Vec::new();
        }
    }
    let sp = s.spec.as_mut().expect("speculative");
    s.kv.len = base + 1 + v.accepted;
    let d = proposal.len();
    sp.counters.round(d, v.accepted);
    if d > 0 {
        match source {
            Source::Lookup => sp.ctrl_lookup.observe(d, v.accepted),
            Source::Model => sp.ctrl_model.observe(d, v.accepted),
            Source::Plain => {}
        }
        metrics::counter!(m::SPEC_DRAFTS).increment(1);
        metrics::counter!(m::SPEC_DRAFT_TOKENS).increment(d as u64);
        metrics::counter!(m::SPEC_ACCEPTED_TOKENS).increment(v.accepted as u64);
        for i in 0..v.accepted {
            metrics::counter!(m::SPEC_ACCEPTED_PER_POS, "position" => i.to_string()).increment(1);
        }
    }
    if std::mem::take(&mut sp.probing) {
        sp.probe_every = if v.accepted == 0 {
            (sp.probe_every * 2).min(PROBE_MAX)
        } else {
            PROBE_EVERY
        };
    }
    s.stats.drafted += d;
    s.stats.accepted += v.accepted;
    let mut new = proposal.tokens[..v.accepted].to_vec();
    new.push(v.next);
    new
}

/// The distributions a verification accepts against, one per row: the target's p (or the
/// cascade rule's π, judging `tokens[i]` with the draft's `q_judge[i]`) from whole rows, a point
/// on each argmax (greedy exact), or p made from each row's candidates (sampled exact with a
/// top-k cut).
pub(crate) fn target_dists(
    rows: Rows,
    judge: &Judge,
    model: &Model,
    tokens: &[u32],
    q_judge: &[Distribution],
    masks: Option<&[Vec<bool>]>,
    stats: &mut GenerateStats,
) -> Vec<Distribution> {
    match rows {
        Rows::Logits(logits) => judge.targets(logits, tokens, q_judge, masks, stats),
        Rows::Argmax(ids) => ids.iter().map(|&id| Distribution::point(id)).collect(),
        Rows::TopK { k, cands } => cands
            .chunks_exact(k)
            .map(|c| Distribution::from_candidates(c, &judge.sampling, model.valid_mask()))
            .collect(),
    }
}
