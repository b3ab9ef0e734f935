//! The output layer restricted to some tokens (FR-Spec) on the device: a draft's step computes
//! logits for the subset's rows and each sequence's own context tokens, every other id -inf,
//! as the CPU engine's restricted output layer does.

use cascade_weights::Layout;

use super::{upload_rows, GpuModel, Pass, Slot, Workspace, STAGING_BYTES};
use crate::device::{Args, DevBuf};
use crate::error::{GpuError, Result};
use crate::kernels as k;
use crate::matmul::{Mat, RowSplit};

/// Rows `ids` of the output matrix, uploaded once.
pub(super) struct Subset {
    mat: Mat,
    /// The ids (sorted, distinct), on the device and here.
    ids_dev: DevBuf,
    ids: Vec<u32>,
    /// Whether each sequence's `extra` tokens get logits too (the CPU engine computes them from
    /// a row-ordered output matrix only).
    extras: bool,
}

/// The extra columns of one pass: the union of the rows' extra tokens outside the subset, and
/// for each row the columns of its own.
struct Extras {
    ids: Vec<i32>,
    row_start: Vec<i32>,
    row_cols: Vec<i32>,
}

impl Subset {
    fn extras(&self, rows: &[&[u32]], vocab: usize) -> Extras {
        let keep = |&&id: &&u32| (id as usize) < vocab && self.ids.binary_search(&id).is_err();
        let mut ids: Vec<u32> = if self.extras {
            rows.iter()
                .flat_map(|e| e.iter().filter(keep))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        ids.sort_unstable();
        ids.dedup();
        let mut ex = Extras {
            ids: ids.iter().map(|&i| i as i32).collect(),
            row_start: vec![0],
            row_cols: Vec::new(),
        };
        for e in rows {
            if self.extras {
                let mut own: Vec<i32> = e
                    .iter()
                    .filter(keep)
                    .map(|id| ids.binary_search(id).expect("in the union") as i32)
                    .collect();
                own.sort_unstable();
                own.dedup();
                ex.row_cols.extend(own);
            }
            ex.row_start.push(ex.row_cols.len() as i32);
        }
        ex
    }
}

impl GpuModel {
    /// Computes logits for the tokens `ids` only from now on (every other token gets -inf):
    /// `rows` are those rows of the output matrix in row order and its stored type. With
    /// `extras`, each sequence's `extra` tokens get their logits too.
    pub fn restrict_output(&mut self, ids: &[u32], rows: &[u8], extras: bool) -> Result<()> {
        let (dtype, cols) = (self.output.dtype(), self.output.cols());
        let sorted = ids.windows(2).all(|w| w[0] < w[1]);
        if !sorted || ids.iter().any(|&i| i as usize >= self.config.vocab_size) {
            return Err(GpuError::Unsupported(
                "output subset ids must be sorted, distinct and in the vocabulary".into(),
            ));
        }
        let k = ids.len();
        let buf = upload_rows(
            &self.dev,
            dtype,
            Layout::Rows,
            rows,
            [k, cols],
            STAGING_BYTES,
        )?;
        let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        self.subset = Some(Subset {
            mat: Mat::new(buf, dtype, k, cols, "output subset")?,
            ids_dev: self.dev.upload(&ids_i32)?,
            ids: ids.to_vec(),
            extras,
        });
        Ok(())
    }

    /// Tokens the output layer computes (the vocabulary, or the subset).
    pub fn output_tokens(&self) -> usize {
        self.subset
            .as_ref()
            .map_or(self.config.vocab_size, |s| s.ids.len())
    }

    /// Logits `out` (`[m][vocab]`, m the rows of `p.xn`) through the restricted layer: the
    /// subset's product and that of the rows' extra tokens (gathered from the whole matrix),
    /// scattered into rows of -inf. `extras[r]`: row r's extra tokens.
    pub(super) fn restricted(
        &self,
        sub: &Subset,
        ws: &mut Workspace,
        p: &mut Pass,
        extras: &[&[u32]],
        out: &DevBuf,
    ) -> Result<()> {
        let (d, vocab, m) = (&self.dev, self.config.vocab_size, extras.len());
        let k = sub.ids.len();
        let ex = sub.extras(extras, vocab);
        let u = ex.ids.len();
        let sub_out = ws.take(d, Slot::SubLogits, m * k * 4)?;
        let ints = |ws: &mut Workspace, s, v: &[i32]| -> Result<DevBuf> {
            let b = ws.take(d, s, v.len().max(1) * 4)?;
            d.write(&b, 0, v)?;
            Ok(b)
        };
        let ext_ids = ints(ws, Slot::ExtIds, &ex.ids)?;
        let row_start = ints(ws, Slot::RowExtStart, &ex.row_start)?;
        let row_cols = ints(ws, Slot::RowExt, &ex.row_cols)?;
        let rb = self.output.row_bytes();
        let ext_out = ws.take(d, Slot::ExtLogits, (m * u).max(1) * 4)?;
        let r = (|| {
            sub.mat
                .apply(d, &mut p.mm, &p.xn, &sub_out, RowSplit::dp4a(m))?;
            if u > 0 {
                let gathered = ws.take(d, Slot::ExtRows, u * rb)?;
                d.launch(
                    "gather_bytes",
                    k::gather_bytes(rb as u32, u as u32),
                    Args::new()
                        .buf(self.output.buf())
                        .buf(&ext_ids)
                        .int(u)
                        .int(rb)
                        .buf(&gathered),
                )?;
                let (dtype, cols) = (self.output.dtype(), self.output.cols());
                let mat = Mat::new(gathered, dtype, u, cols, "extra rows")?;
                let r = mat.apply(d, &mut p.mm, &p.xn, &ext_out, RowSplit::dp4a(m));
                ws.put(Slot::ExtRows, mat.into_buf());
                r?;
            }
            d.launch(
                "scatter_logits",
                k::scatter_logits(m as u32),
                Args::new()
                    .buf(out)
                    .int(vocab)
                    .int(m)
                    .buf(&sub_out)
                    .buf(&sub.ids_dev)
                    .int(k)
                    .buf(&ext_out)
                    .buf(&ext_ids)
                    .int(u)
                    .buf(&row_start)
                    .buf(&row_cols),
            )
        })();
        ws.put(Slot::SubLogits, sub_out);
        ws.put(Slot::ExtIds, ext_ids);
        ws.put(Slot::RowExtStart, row_start);
        ws.put(Slot::RowExt, row_cols);
        ws.put(Slot::ExtLogits, ext_out);
        r
    }
}
