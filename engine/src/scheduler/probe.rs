//! Costs measured on the machine the engine runs on, before the first request: a few forwards of
//! each model over throwaway blocks, timed by rows. The plan prices a draft step, a target step
//! of k rows and a prompt chunk from these from the first step on, instead of from constants or
//! a guess that holds on one CPU only (a 0.5B draft's step costs about 0.5 of a 1.5B target's
//! with AVX-512 VNNI and about 0.75 with AVX2 alone). Running measurements replace them as
//! requests run. Only an engine with a draft model probes: speculation is what the costs decide.

use std::time::Instant;

use crate::error::Result;
use crate::model::{Logits, Model, Reduce, SeqInput};

use super::kv::{BlockPool, SeqBlocks};
use super::step::{Buffers, Costs};

/// Positions a probe's forwards sit on (a short prompt's worth of context).
const CONTEXT: usize = 32;
/// Target rows timed: a decode step, verifications of 1, 2, 4 and 8 drafted tokens, and a
/// 17-row forward (a prompt chunk's scale).
const TARGET_ROWS: [usize; 6] = [1, 2, 3, 5, 9, 17];
/// Draft rows timed: a drafting step, first forwards that catch up on a few tokens, and the
/// catch-ups after a streak of plain steps and the warm-up chunks of a prompt (32 rows): the
/// plan prices a probe by them, and extrapolated from a few rows they would be guesses.
const DRAFT_ROWS: [usize; 6] = [1, 2, 3, 8, 17, 32];
/// Widest forward timed with every row's logits (a verification of 8 drafted tokens); wider
/// ones (catch-ups, chunks) want only their last row's, as the steps do.
const MAX_ALL_ROWS: usize = 9;
/// Timed forwards of each width (after a warm-up that faults the weights in); the fastest is
/// kept: on a shared host the noise only ever adds time.
const ROUNDS: usize = 3;

/// Seconds spent and what was measured, for the load log.
pub(crate) struct Probed {
    pub seconds: f64,
    pub target_1: f64,
    pub draft_1: f64,
}

/// Times both models' forwards by rows into `costs` (nothing when a model's pool cannot hold the
/// probe's positions, or when there is no draft).
pub(crate) fn probe(
    (target, draft): (&Model, Option<&Model>),
    (tpool, dpool): (&mut BlockPool, Option<&mut BlockPool>),
    costs: &mut Costs,
    bufs: &mut Buffers,
) -> Result<Option<Probed>> {
    let (Some(draft), Some(dpool)) = (draft, dpool) else {
        return Ok(None);
    };
    let t0 = Instant::now();
    let t_bufs = (&mut bufs.scratch_t, &mut bufs.out_t);
    let d_bufs = (&mut bufs.scratch_d, &mut bufs.out_d);
    let (Some(t), Some(d)) = (
        time_rows(target, tpool, &TARGET_ROWS, t_bufs)?,
        time_rows(draft, dpool, &DRAFT_ROWS, d_bufs)?,
    ) else {
        return Ok(None);
    };
    for (&n, &s) in TARGET_ROWS.iter().zip(&t) {
        costs.target.observe(n, s);
    }
    for (&n, &s) in DRAFT_ROWS.iter().zip(&d) {
        costs.draft.observe(n, s);
    }
    // The probe's buffers go back (the steps grow their own to what they need), and with them
    // the heap they took.
    *bufs = Buffers::default();
    release_freed();
    Ok(Some(Probed {
        seconds: t0.elapsed().as_secs_f64(),
        target_1: t[0],
        draft_1: d[0],
    }))
}

/// The fewest seconds of a forward of each of `rows` rows on top of [`CONTEXT`] positions (the
/// widths interleaved, [`ROUNDS`] times), over blocks taken from `pool` and given back. `None`
/// when the pool cannot spare them.
fn time_rows(
    model: &Model,
    pool: &mut BlockPool,
    rows: &[usize],
    (scratch, out): (&mut crate::scratch::Scratch, &mut crate::model::Outputs),
) -> Result<Option<Vec<f64>>> {
    let widest = rows.iter().copied().max().unwrap_or(1);
    let mut blocks = SeqBlocks::default();
    if !pool.grow(&mut blocks, pool.blocks_for(CONTEXT + widest)) {
        pool.release(&mut blocks);
        return Ok(None);
    }
    let ids: Vec<u32> = (0..model.vocab_size() as u32)
        .filter(|&id| model.is_valid_token(id))
        .take(CONTEXT + widest)
        .collect();
    let mut run = |toks: &[u32], past: usize, want: Logits| {
        let input = SeqInput {
            tokens: toks,
            table: &blocks.table,
            past,
            want,
            reduce: Reduce::Argmax,
            extra: &[],
            prompt: 0,
        };
        let t = Instant::now();
        model.forward_batch(&mut pool.storage, &[input], scratch, out)?;
        Ok::<f64, crate::error::EngineError>(t.elapsed().as_secs_f64())
    };
    let result = (|| {
        // The context with its last row's logits, which faults every weight in, the output
        // layer's too (the first request would pay it).
        run(&ids[..CONTEXT], 0, Logits::Last)?;
        let mut times = vec![Vec::new(); rows.len()];
        for _ in 0..ROUNDS {
            for (i, &n) in rows.iter().enumerate() {
                // A verification wants every row's logits; a draft's catch-up or warm-up chunk
                // only its last (and the buffers stay the size real steps make them).
                let want = if n > MAX_ALL_ROWS {
                    Logits::Last
                } else {
                    Logits::All
                };
                times[i].push(run(&ids[CONTEXT..CONTEXT + n], CONTEXT, want)?);
            }
        }
        Ok(times.into_iter().map(fastest).collect())
    })();
    pool.release(&mut blocks);
    result.map(Some)
}

fn fastest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

/// Gives the heap memory the probe's forwards freed back to the system (glibc keeps it in its
/// arenas otherwise, and it would count as the process's own for as long as it runs).
fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes a byte count and only returns free memory at the
        // tops of its arenas to the system; it is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}
