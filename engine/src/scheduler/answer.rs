//! Answer mode as phases of a scheduled sequence ([`AnswerPhase`]): the draft writes the whole
//! answer in the step's draft forwards (a few tokens a step beside other streams, more when
//! alone), while the target computes the prompt but its last position; then the target scores
//! the prompt's last position and the answer in prompt-like chunks under the step's prefill
//! budget, verifying each chunk as it comes (the same pure verifier as every round) and emitting
//! what it keeps. Nothing here runs a forward: the step's forwards carry these rows with every
//! other sequence's, so an answer never stalls the batch, is cancelled at the next step, and
//! holds only the blocks admission gave it.

use crate::model::{Model, Rows};
use crate::speculative::{verify, verify_prefix, Judge, Proposal};

use super::round::target_dists;
use super::seq::{AnswerPhase, Seq};

/// Answer tokens the draft writes in one step when no other sequence is decoding (beside
/// streams it writes as many as the deepest drafting sequence, at least one, so the step costs
/// them no extra draft forward).
pub(crate) const ANSWER_BURST: usize = 16;

/// Scoring rows per chunk when the sequence needs whole logit rows back (sampling without a
/// top-k cut, cascade rules): bounds the logits buffer to this many vocabulary-sized rows.
const SCORE_WHOLE_ROWS: usize = 32;

/// The target's part of an answer-mode sequence this step.
pub(crate) enum TargetWork {
    /// Prompt positions `start..end` (never the prompt's last: the scoring starts there).
    Prefill { start: usize, end: usize },
    /// Scoring positions `start..end` of the prompt followed by the answer.
    Score { start: usize, end: usize },
}

/// The target's work for answer-mode sequence `s` within `budget` rows (`whole_rows`: its rows
/// come back as whole logits). A complete answer whose prompt is computed starts scoring here.
pub(crate) fn target_work(s: &mut Seq, budget: usize, whole_rows: bool) -> Option<TargetWork> {
    let p = s.prompt_len;
    let start = s.kv.len;
    let sp = s.spec.as_mut()?;
    let phase = sp.answer.as_mut()?;
    if budget == 0 {
        return None;
    }
    if let AnswerPhase::Writing { answer, done } = phase {
        if start + 1 < p {
            let end = (p - 1).min(start + budget);
            return Some(TargetWork::Prefill { start, end });
        }
        if !*done {
            return None;
        }
        let answer = std::mem::take(answer);
        *phase = AnswerPhase::Scoring { answer };
    }
    let total = p + phase.answer().len();
    let mut end = total.min(start + budget);
    if whole_rows {
        end = end.min(start + SCORE_WHOLE_ROWS);
    }
    Some(TargetWork::Score { start, end })
}

/// The tokens at positions `start..end` of the prompt followed by the answer.
pub(crate) fn score_tokens(s: &Seq, start: usize, end: usize) -> Vec<u32> {
    let answer = &s
        .spec
        .as_ref()
        .and_then(|sp| sp.answer.as_ref())
        .expect("answering")
        .answer()
        .tokens;
    let p = s.prompt_len;
    (start..end)
        .map(|pos| {
            if pos < p {
                s.context[pos]
            } else {
                answer[pos - p]
            }
        })
        .collect()
}

/// Verifies one scored chunk (`rows`: the target's rows for positions `start..` of prompt and
/// answer; row i judges answer token `start + 1 - prompt_len + i`, a row past the answer is the
/// bonus position). Sets the sequence's cached length to what it keeps and returns the tokens
/// to emit: the chunk's answer tokens when all are kept and more follow; at the first rejection,
/// or after the whole answer, the kept ones and the target's token, which ends the phases.
pub(crate) fn score(
    s: &mut Seq,
    model: &Model,
    rows: Rows,
    start: usize,
    n_rows: usize,
) -> Vec<u32> {
    let sp = s.spec.as_mut().expect("speculative");
    let Some(AnswerPhase::Scoring { answer }) = &sp.answer else {
        unreachable!("a scored chunk belongs to a scoring sequence")
    };
    let judge = Judge {
        target: model,
        cascade: sp.cascade,
        sampling: s.job.req.config.sampling,
    };
    let j0 = start + 1 - s.prompt_len;
    let t_end = (j0 + n_rows).min(answer.len());
    let tokens = &answer.tokens[j0..t_end];
    let q_judge = answer.judge.get(j0..).unwrap_or(&[]);
    let p = target_dists(rows, &judge, model, tokens, q_judge, None, &mut s.stats);
    let q = &answer.probs[j0..t_end];
    let rng = s.sampler.rng();
    let verdict = if tokens.len() == n_rows {
        verify_prefix(&p, q, tokens, rng)
    } else {
        Some(verify(&p, q, tokens, rng))
    };
    let Some(v) = verdict else {
        // Every token of the chunk kept, more to score: the cache holds them all.
        return tokens.to_vec();
    };
    s.kv.len = start + 1 + v.accepted;
    let mut new = tokens[..v.accepted].to_vec();
    new.push(v.next);
    let st = &mut s.stats;
    st.answer_drafted = answer.len();
    st.answer_kept = j0 + v.accepted;
    st.drafted += answer.len();
    st.accepted += j0 + v.accepted;
    st.target_passes += 1;
    sp.answer = None;
    new
}

/// The draft forward feed of a writing sequence this step: its prompt (in chunks of `chunk`)
/// or its newest answer token, the answer taken out of the sequence to be filled, and how long
/// the answer may be once this step is done (`burst` more tokens, within `room`). `None` when it
/// is not writing.
pub(crate) fn writer_feed(
    s: &mut Seq,
    model: &Model,
    (burst, chunk, room): (usize, usize, usize),
) -> Option<(Vec<u32>, bool, Proposal, usize)> {
    let p = s.prompt_len;
    let sp = s.spec.as_mut()?;
    let Some(AnswerPhase::Writing { answer, done }) = &mut sp.answer else {
        return None;
    };
    if *done {
        return None;
    }
    if answer.len() >= room {
        *done = true;
        return None;
    }
    let d = sp.draft.as_mut()?;
    if d.fed.len() < p {
        if model.output_tokens() < model.vocab_size() && d.vocab.is_empty() {
            d.vocab.extend_from_slice(&s.context[..p]);
            d.vocab.sort_unstable();
            d.vocab.dedup();
        }
        let end = p.min(d.fed.len() + chunk);
        let toks = s.context[d.fed.len()..end].to_vec();
        return Some((toks, end == p, std::mem::take(answer), burst.min(room)));
    }
    let toks = answer.tokens[d.fed.len() - p..].to_vec();
    let want = (answer.len() + burst).min(room);
    Some((toks, true, std::mem::take(answer), want))
}

/// Puts a writer's answer back after the step's draft forwards; it is complete once it reached
/// `room`, ended with an end of generation (`eog`), or stalled on a token the target cannot
/// take (`ended`).
pub(crate) fn writer_done(s: &mut Seq, answer: Proposal, room: usize, eog: bool, ended: bool) {
    let done = ended || eog || answer.len() >= room;
    if let Some(sp) = s.spec.as_mut() {
        sp.answer = Some(AnswerPhase::Writing { answer, done });
    }
    if done {
        s.stats.answer_draft_s = s.job.submitted.elapsed().as_secs_f64();
    }
}

/// Answer tokens a sequence may write: `max_tokens`, and what its blocks hold after the prompt
/// (the scoring feeds every answer token).
pub(crate) fn writer_room(s: &Seq, block: usize, context: usize) -> usize {
    let cap = (s.kv.table.len() * block).min(context);
    s.max_tokens().min(cap.saturating_sub(s.prompt_len))
}
