//! A grammar's part in a step. The draft samples each drafted token under the grammar's allowed
//! set at its position (and the grammar consumes it); the target's rows of the verification are
//! masked by the same sets, and the bonus row by the set after the last drafted token; after
//! verification the grammar is rolled back to the kept tokens and moved past the emitted one.
//! The verifier itself stays the pure function every mode uses: it sees masked distributions.

use cascade_weights::Tokenizer;

use crate::constraint::{Allowed, Constraint};
use crate::error::{EngineError, Result};
use crate::model::{Model, Rows};
use crate::sampler::Sampler;
use crate::speculative::Proposal;

use super::metrics as m;
use super::round::draw_draft;
use super::seq::Seq;

/// Runs `f` (mask work), recording its time.
fn timed<T>(f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let out = f();
    metrics::histogram!(m::GRAMMAR_MASK).record(t.elapsed().as_secs_f64());
    out
}

fn no_row() -> EngineError {
    EngineError::Grammar {
        reason: "a constrained sequence got a reduced logit row".into(),
    }
}

fn dead_end() -> EngineError {
    EngineError::Grammar {
        reason: "no token of the vocabulary continues the grammar here".into(),
    }
}

/// The grammars whose next allowed set is known before a forward, taken out of their
/// sequences so that the sets are made on another thread while the forward runs.
pub(super) struct Ahead(Vec<(usize, Constraint, Option<Allowed>)>);

impl Ahead {
    /// Takes the grammars of the sequences at `ready` (indices into `running`).
    pub fn take(running: &mut [Seq], ready: &[usize]) -> Ahead {
        Ahead(
            ready
                .iter()
                .filter_map(|&i| running[i].constraint.take().map(|c| (i, c, None)))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Makes each one's set (a failure is left for the step to meet again and report). Not
    /// timed: this runs beside the forward, off the scheduler's path.
    pub fn compute(&mut self) {
        for (_, c, a) in &mut self.0 {
            *a = c.allowed().ok();
        }
    }

    /// Gives each grammar back to its sequence, with the set made for its next position.
    pub fn put_back(self, running: &mut [Seq]) {
        for (i, c, a) in self.0 {
            running[i].constraint = Some(c);
            running[i].ahead = a;
        }
    }
}

/// A plain step's token (or a prompt's first): drawn from `row` under the grammar's set.
pub(super) fn next_token(s: &mut Seq, model: &Model, row: Rows) -> Option<u32> {
    let ahead = s.ahead.take();
    let c = s.constraint.as_mut()?;
    match draw(c, ahead, &mut s.sampler, model, row) {
        Ok(t) => Some(t),
        Err(e) => {
            s.fail(e);
            None
        }
    }
}

fn draw(
    c: &mut Constraint,
    ahead: Option<Allowed>,
    sampler: &mut Sampler,
    model: &Model,
    row: Rows,
) -> Result<u32> {
    let Rows::Logits(logits) = row else {
        return Err(no_row());
    };
    let valid = model.valid_mask();
    let mask = match ahead {
        Some(a) => timed(|| a.and(valid)),
        None => timed(|| c.allowed().map(|a| a.and(valid)))?,
    };
    if !mask.contains(&true) {
        return Err(dead_end());
    }
    let t = sampler.sample(logits, &mask).token;
    if !mask.get(t as usize).copied().unwrap_or(false) {
        return Err(dead_end());
    }
    advance(c, &model.tokenizer, t)?;
    Ok(t)
}

/// The grammar moves past `t` (an end of generation ends the sequence instead).
fn advance(c: &mut Constraint, tok: &Tokenizer, t: u32) -> Result<()> {
    if tok.is_eog(t) {
        return Ok(());
    }
    c.consume(&[t])
}

/// One drafted token under the grammar: drawn on `valid` ids the grammar allows here, which the
/// proposal keeps for the target's row of the same position.
pub(super) fn draft_token(
    s: &mut Seq,
    row: Rows,
    valid: &[bool],
    proposal: &mut Proposal,
    tok: &Tokenizer,
) -> Option<u32> {
    let c = s.constraint.as_mut()?;
    let (allowed, mask) = match timed(|| c.allowed().map(|a| (a.and(valid), a))) {
        Ok((mask, a)) => (a, mask),
        Err(e) => {
            s.fail(e);
            return None;
        }
    };
    if !mask.contains(&true) {
        return None;
    }
    let t = draw_draft(s, row, &mask, proposal)?;
    if !mask.get(t as usize).copied().unwrap_or(false) {
        // A row whose allowed ids all have -inf logits (a restricted draft vocabulary) yields
        // no draw the grammar takes: the proposal ends before it.
        proposal.pop();
        return None;
    }
    proposal.allowed.push(allowed);
    if let Err(e) = advance(s.constraint.as_mut()?, tok, t) {
        s.fail(e);
        return None;
    }
    Some(t)
}

/// The target's valid ids at each row of the verification of `proposal` (k drafted tokens,
/// k + 1 rows), and how many drafted tokens the grammar has consumed.
pub(super) struct RowMasks {
    pub rows: Vec<Vec<bool>>,
    pub consumed: usize,
}

/// Masks for a verification. The draft model's tokens come with their positions' sets (and
/// were consumed as drafted); the rest (a lookup's proposal, the bonus row) are computed here,
/// consuming drafted tokens while the grammar allows them. Rows past the first token it forbids
/// (or past an end of generation) stay empty: verification rejects that token or stops there,
/// so it never reads them.
/// `ahead`: the set after every drafted token, made while the forward ran.
pub(super) fn row_masks(
    c: &mut Constraint,
    (proposal, ahead): (&Proposal, Option<Allowed>),
    valid: &[bool],
    tok: &Tokenizer,
) -> Result<RowMasks> {
    timed(|| masks_of(c, (proposal, ahead), valid, tok))
}

fn masks_of(
    c: &mut Constraint,
    (proposal, mut ahead): (&Proposal, Option<Allowed>),
    valid: &[bool],
    tok: &Tokenizer,
) -> Result<RowMasks> {
    let k = proposal.len();
    let t = &proposal.tokens;
    let mut rows: Vec<Vec<bool>> = proposal.allowed.iter().map(|a| a.and(valid)).collect();
    let mut consumed = rows.len();
    if consumed > 0 && tok.is_eog(t[consumed - 1]) {
        consumed -= 1;
    } else {
        while rows.len() <= k {
            let i = rows.len();
            let a = match ahead.take() {
                Some(a) if i == k && proposal.allowed.len() == k => a,
                _ => c.allowed()?,
            };
            let go_on = i < k && !tok.is_eog(t[i]) && a.allows(t[i]);
            rows.push(a.and(valid));
            if !go_on {
                break;
            }
            c.consume(&t[i..=i])?;
            consumed += 1;
        }
    }
    rows.resize(k + 1, Vec::new());
    Ok(RowMasks { rows, consumed })
}

/// After verification: the grammar back from the `consumed` drafted tokens to the `accepted`
/// ones, then past `next`, the token the round emits after them. Where an end of generation
/// was accepted the sequence stops, and the grammar is left as it is.
pub(super) fn settle(
    c: &mut Constraint,
    consumed: usize,
    (accepted, next): (usize, u32),
    tok: &Tokenizer,
) -> Result<()> {
    if accepted > consumed {
        return Ok(());
    }
    c.rollback(consumed - accepted)?;
    advance(c, tok, next)
}
