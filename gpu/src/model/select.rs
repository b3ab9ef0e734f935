//! What comes back of a pass's logit rows: whole rows, each row's greedy choice, or its k
//! largest logits. The last two are reduced on the device, so a decode step copies back one id,
//! or k (id, logit) pairs, per row instead of the vocabulary's logits.

use crate::device::{Args, DevBuf};
use crate::error::{GpuError, Result};
use crate::kernels as k;

use super::{GpuModel, Slot, Workspace};

/// How a sequence's `want` rows come back from a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowReduce {
    /// Every logit: `vocab_size` values per row.
    #[default]
    Whole,
    /// The greedy choice alone: the valid id with the largest logit (lowest id on ties).
    Argmax,
    /// The k (1 to [`k::TOPK_MAX`]) largest logits among the valid ids, as (id, logit) in
    /// descending order, lowest id on ties, NaN never taken; past the row's valid ids,
    /// ([`NO_ID`], -inf).
    TopK(usize),
}

/// The id of a top-k entry past a row's valid ids.
pub const NO_ID: u32 = u32::MAX;

/// Where a pass puts its rows, each kind in the order of its sequences: the whole rows
/// (`vocab_size` logits each), the greedy choices, and the top-k rows (k entries each, the
/// row's own k).
pub struct PassOut<'a> {
    pub logits: &'a mut Vec<f32>,
    pub argmax: &'a mut Vec<u32>,
    pub top: &'a mut Vec<(u32, f32)>,
}

/// The rows of a pass's output layer, in this order: `whole` copied back as logits, `argmax`
/// reduced to their greedy choice, then one top-k row per entry of `top_k` (its k).
#[derive(Debug, Clone, Default)]
pub(super) struct OutRows {
    pub(super) whole: usize,
    pub(super) argmax: usize,
    pub(super) top_k: Vec<usize>,
}

impl OutRows {
    pub(super) fn len(&self) -> usize {
        self.whole + self.argmax + self.top_k.len()
    }
}

/// Checks a top-k request.
pub(super) fn check_k(si: usize, r: RowReduce) -> Result<()> {
    match r {
        RowReduce::TopK(kk) if kk == 0 || kk > k::TOPK_MAX as usize => {
            Err(GpuError::BadBatch(format!(
                "sequence {si}: top-{kk} rows (the device reduces 1 to {} logits a row)",
                k::TOPK_MAX
            )))
        }
        _ => Ok(()),
    }
}

impl GpuModel {
    /// Copies back the whole rows of logits `out`, and the reductions of the rows after them.
    pub(super) fn read_rows(
        &self,
        ws: &mut Workspace,
        out: &DevBuf,
        rows: &OutRows,
        o: PassOut,
    ) -> Result<()> {
        let vocab = self.config.vocab_size;
        o.logits.resize(rows.whole * vocab, 0.0);
        self.dev.read(out, 0, &mut o.logits[..])?;
        let at = rows.whole * vocab * 4;
        if rows.argmax > 0 {
            let ids = self.argmax_rows(ws, out, at, rows.argmax)?;
            // No valid id at all (-1): id 0, as the CPU sampler's empty distribution gives.
            o.argmax.extend(ids.iter().map(|&i| i.max(0) as u32));
        }
        let n = rows.top_k.len();
        if n > 0 {
            let kmax = rows.top_k.iter().copied().max().unwrap_or(1);
            let at = at + rows.argmax * vocab * 4;
            let (ids, vals) = self.top_k_rows(ws, out, at, n, kmax)?;
            for (r, &kk) in rows.top_k.iter().enumerate() {
                let row = r * kmax..r * kmax + kk;
                o.top
                    .extend(ids[row.clone()].iter().zip(&vals[row]).map(|(&i, &v)| {
                        match u32::try_from(i) {
                            Ok(id) => (id, v),
                            Err(_) => (NO_ID, f32::NEG_INFINITY),
                        }
                    }));
            }
        }
        Ok(())
    }

    /// The greedy choice of `n` rows of logits at byte `at` of `out` (-1: no valid id).
    fn argmax_rows(
        &self,
        ws: &mut Workspace,
        out: &DevBuf,
        at: usize,
        n: usize,
    ) -> Result<Vec<i32>> {
        let (d, vocab) = (&self.dev, self.config.vocab_size);
        let idx = ws.take(d, Slot::ArgIdx, n * 4)?;
        let val = ws.take(d, Slot::ArgVal, n * 4)?;
        let mut ids = vec![0i32; n];
        let r = d
            .launch(
                "argmax_rows",
                k::argmax_rows(n as u32),
                Args::new()
                    .buf_at(out, at)
                    .buf(&self.valid)
                    .int(vocab)
                    .int(n)
                    .buf(&idx)
                    .buf(&val),
            )
            .and_then(|()| d.read(&idx, 0, &mut ids));
        ws.put(Slot::ArgIdx, idx);
        ws.put(Slot::ArgVal, val);
        r.map(|()| ids)
    }

    /// The `kk` largest valid logits of `n` rows at byte `at` of `out`, as `n * kk` ids and
    /// values: `topk_rows` over segments of each row, then over the segments' candidates until
    /// one segment is left (the same result for any segmentation: the order is total).
    fn top_k_rows(
        &self,
        ws: &mut Workspace,
        out: &DevBuf,
        at: usize,
        n: usize,
        kk: usize,
    ) -> Result<(Vec<i32>, Vec<f32>)> {
        let (d, vocab) = (&self.dev, self.config.vocab_size);
        let first = n * k::topk_segments(vocab as u32) as usize * kk * 4;
        let slots = [(Slot::TopIdx, Slot::TopVal), (Slot::TopIdx2, Slot::TopVal2)];
        let mut bufs = Vec::with_capacity(2);
        for (si, sv) in slots {
            bufs.push((ws.take(d, si, first)?, ws.take(d, sv, first)?));
        }
        let r = self.top_k_stages(out, at, n, kk, &bufs);
        for ((si, sv), (bi, bv)) in slots.into_iter().zip(bufs) {
            ws.put(si, bi);
            ws.put(sv, bv);
        }
        r
    }

    fn top_k_stages(
        &self,
        out: &DevBuf,
        at: usize,
        n: usize,
        kk: usize,
        bufs: &[(DevBuf, DevBuf)],
    ) -> Result<(Vec<i32>, Vec<f32>)> {
        let d = &self.dev;
        let mut len = self.config.vocab_size;
        let mut src: Option<usize> = None;
        let mut dst = 0;
        loop {
            let segs = k::topk_segments(len as u32) as usize;
            let args = match src {
                None => Args::new().buf_at(out, at).ptr(0).buf(&self.valid),
                Some(s) => Args::new().buf(&bufs[s].1).buf(&bufs[s].0).ptr(0),
            };
            d.launch(
                "topk_rows",
                k::topk_rows(len as u32, n as u32),
                args.int(len)
                    .int(n)
                    .int(kk)
                    .buf(&bufs[dst].0)
                    .buf(&bufs[dst].1),
            )?;
            if segs == 1 {
                break;
            }
            (len, src, dst) = (segs * kk, Some(dst), 1 - dst);
        }
        let mut ids = vec![0i32; n * kk];
        let mut vals = vec![0f32; n * kk];
        d.read(&bufs[dst].0, 0, &mut ids)?;
        d.read(&bufs[dst].1, 0, &mut vals)?;
        Ok((ids, vals))
    }
}
