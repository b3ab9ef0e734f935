//! A Llama/Qwen2-family model on a device: weights uploaded once in their stored quantized
//! formats, keys and values in a paged pool whose block ids are the scheduler's, and one forward
//! pass over a ragged batch that mirrors the CPU engine's layer by layer.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use cascade_weights::{Layout, ModelConfig, RopeStyle, TensorView};

use crate::device::{Args, DevBuf, Device};
use crate::error::{GpuError, Result};
use crate::graph::{GraphStats, Graphs};
use crate::kernels as k;
use crate::matmul::{Mat, Matmul, RowSplit};

mod select;
mod subset;

use select::OutRows;
pub use select::{PassOut, RowReduce, NO_ID};
use subset::Subset;

/// What one layer of the engine's model hands over for upload.
pub struct LayerSource<'a> {
    pub attn_norm: &'a [f32],
    pub ffn_norm: &'a [f32],
    pub wq: &'a TensorView,
    pub wk: &'a TensorView,
    pub wv: &'a TensorView,
    pub wo: &'a TensorView,
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub w_gate: &'a TensorView,
    pub w_up: &'a TensorView,
    pub w_down: &'a TensorView,
}

/// The whole model as the engine holds it (views into the weight store).
pub struct ModelSource<'a> {
    pub config: &'a ModelConfig,
    pub embd: &'a TensorView,
    pub output: &'a TensorView,
    pub output_norm: &'a [f32],
    pub layers: Vec<LayerSource<'a>>,
    /// `valid[id]`: the id may be chosen by greedy decoding (`vocab_size` entries).
    pub valid: &'a [bool],
}

struct GpuLayer {
    attn_norm: DevBuf,
    ffn_norm: DevBuf,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    bq: Option<DevBuf>,
    bk: Option<DevBuf>,
    bv: Option<DevBuf>,
    w_gate: Mat,
    w_up: Mat,
    w_down: Mat,
}

/// A model's weights on a device.
pub struct GpuModel {
    dev: Device,
    config: ModelConfig,
    embd: Mat,
    output: Mat,
    output_norm: DevBuf,
    layers: Vec<GpuLayer>,
    /// One byte per id, nonzero where greedy decoding may choose it.
    valid: DevBuf,
    /// The output layer restricted to some tokens (a draft's cheaper step, FR-Spec).
    subset: Option<Subset>,
    /// Whether prompt rows take the tensor-core products ([`RowSplit`]).
    mma: bool,
    /// Whether passes of up to [`GRAPH_MAX_ROWS`] rows run their layers as one CUDA graph
    /// (turned off for good, with a warning, if a graph ever fails to capture or run).
    graphs: AtomicBool,
    /// Bytes of device memory the weights take.
    pub weight_bytes: usize,
}

/// Keys and values of every layer in blocks of `block` positions: pool row
/// `b * block + offset` holds position `offset` of block `b` (`kv_dim` floats).
pub struct GpuKv {
    k: Vec<DevBuf>,
    v: Vec<DevBuf>,
    n_blocks: usize,
    block: usize,
    kv_dim: usize,
    dev: Device,
}

impl GpuKv {
    /// Copies the first `n` positions of block `from` into block `to`, every layer (a shared
    /// prefix that ends inside a block, reused by a new sequence).
    pub fn copy_positions(&self, from: u32, to: u32, n: usize) -> Result<()> {
        let (b, kv) = (self.block, self.kv_dim);
        assert!(
            n <= b && (from as usize) < self.n_blocks && (to as usize) < self.n_blocks,
            "copy of {n} positions from block {from} to {to} of {} blocks of {b}",
            self.n_blocks
        );
        let (src, dst) = (from as usize * b * kv * 4, to as usize * b * kv * 4);
        let len = n * kv;
        for buf in self.k.iter().chain(&self.v) {
            self.dev.launch(
                "copy_f32",
                k::elementwise(len as u32),
                Args::new().buf_at(buf, dst).buf_at(buf, src).int(len),
            )?;
        }
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len()).sum()
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }
}

/// One sequence of a batch: `tokens` at positions `past..`, its blocks `table`, and the rows
/// of its new tokens that want logits, which come back as `reduce` says: whole, or reduced on the
/// device to their greedy choice or their top k.
#[derive(Debug, Clone)]
pub struct GpuSeq<'a> {
    pub tokens: &'a [u32],
    pub table: &'a [u32],
    pub past: usize,
    pub want: Range<usize>,
    pub reduce: RowReduce,
    /// Tokens whose logits this sequence also needs when the output layer is restricted
    /// ([`GpuModel::restrict_output`]): its context's tokens.
    pub extra: &'a [u32],
    /// Positions below this are the sequence's prompt: on a device with tensor cores their rows
    /// take the tensor-core products, the others (generated tokens) the dp4a ones.
    pub prompt: usize,
}

/// Device buffers of one pass, grown as needed and kept between passes, and the graphs of the
/// passes that ran as graphs.
#[derive(Default)]
pub struct Workspace {
    bufs: Vec<Option<DevBuf>>,
    graphs: Graphs,
}

/// Passes of up to this many rows (decode steps and verification windows of a batch) run their
/// layers as one CUDA graph: there the launches, several hundred a pass, cost the host more than
/// the kernels cost the GPU. Larger passes launch their kernels directly.
pub const GRAPH_MAX_ROWS: usize = 32;

/// The workspace's buffers by role.
#[derive(Clone, Copy)]
enum Slot {
    X,
    Xn,
    Q,
    K,
    V,
    Attn,
    Proj,
    Gate,
    Up,
    Acts,
    Logits,
    Ids,
    Pos,
    Slots,
    Tables,
    TableStart,
    SeqOfRow,
    OutRows,
    PartO,
    PartMl,
    ArgIdx,
    ArgVal,
    TopIdx,
    TopVal,
    TopIdx2,
    TopVal2,
    SubLogits,
    ExtRows,
    ExtLogits,
    ExtIds,
    RowExtStart,
    RowExt,
}

const N_SLOTS: usize = Slot::RowExt as usize + 1;

impl Workspace {
    /// What the graphs of this workspace's passes did.
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs.stats
    }

    fn take(&mut self, dev: &Device, slot: Slot, bytes: usize) -> Result<DevBuf> {
        if self.bufs.len() < N_SLOTS {
            self.bufs.resize_with(N_SLOTS, || None);
        }
        match self.bufs[slot as usize].take() {
            Some(b) if b.len() >= bytes => Ok(b),
            _ => dev.alloc(bytes.max(256).next_power_of_two()),
        }
    }

    fn put(&mut self, slot: Slot, b: DevBuf) {
        self.bufs[slot as usize] = Some(b);
    }
}

/// Host bytes a weight upload stages at a time.
const STAGING_BYTES: usize = 16 << 20;

/// Uploads a matrix in its stored type, rows in file order, from the store's mapping through the
/// device's staging buffer; an interleaved copy made for the CPU kernels is put back in row
/// order a staging buffer at a time (whole groups of eight rows), so no host copy of the matrix
/// is made.
fn upload_mat(dev: &Device, t: &TensorView) -> Result<Mat> {
    let (rows, cols) = match t.shape.as_slice() {
        [r, c] => (*r, *c),
        s => {
            return Err(GpuError::Unsupported(format!(
                "{}: shape {s:?} is not a matrix",
                t.name
            )))
        }
    };
    let buf = upload_rows(
        dev,
        t.dtype,
        t.layout,
        t.bytes(),
        [rows, cols],
        STAGING_BYTES,
    )
    .map_err(|e| match e {
        GpuError::Unsupported(m) => GpuError::Unsupported(format!("{}: {m}", t.name)),
        e => e,
    })?;
    Mat::new(buf, t.dtype, rows, cols, &t.name)
}

/// The bytes of a `[rows, cols]` matrix in `layout` on the device in row order, staged
/// `staging` bytes at a time (rounded to whole groups of eight rows for an interleaved one).
fn upload_rows(
    dev: &Device,
    dtype: cascade_weights::DType,
    layout: Layout,
    bytes: &[u8],
    [rows, cols]: [usize; 2],
    staging: usize,
) -> Result<DevBuf> {
    match layout {
        Layout::Rows => dev.upload_staged(bytes.len(), staging, |off, chunk| {
            chunk.copy_from_slice(&bytes[off..off + chunk.len()]);
            Ok(())
        }),
        Layout::Interleaved8 => {
            let group = cascade_kernels::interleave::GROUP * (bytes.len() / rows.max(1));
            let step = (staging / group.max(1)).max(1) * group;
            dev.upload_staged(bytes.len(), step, |off, chunk| {
                let part = &bytes[off..off + chunk.len()];
                let n = rows * part.len() / bytes.len();
                let rows_layout = cascade_kernels::interleave::deinterleave8(dtype, part, n, cols)
                    .map_err(|e| GpuError::Unsupported(e.to_string()))?;
                chunk.copy_from_slice(&rows_layout);
                Ok(())
            })
        }
    }
}

impl GpuModel {
    /// Uploads `src` to `dev`.
    pub fn upload(dev: &Device, src: &ModelSource) -> Result<GpuModel> {
        let c = src.config;
        let (h, kvh, hd) = (c.n_heads as u32, c.n_kv_heads as u32, c.head_dim as u32);
        if !k::attention_supported(h, kvh, hd) || hd > k::ROPE_MAX_HEAD_DIM {
            return Err(GpuError::Unsupported(format!(
                "attention of {h} heads over {kvh} KV heads of {hd} dimensions"
            )));
        }
        if src.valid.len() != c.vocab_size {
            return Err(GpuError::Unsupported(format!(
                "a validity mask of {} ids for a vocabulary of {}",
                src.valid.len(),
                c.vocab_size
            )));
        }
        let valid: Vec<u8> = src.valid.iter().map(|&v| v as u8).collect();
        let mat = |t: &TensorView| upload_mat(dev, t);
        let opt = |b: Option<&[f32]>| b.map(|b| dev.upload(b)).transpose();
        let mut layers = Vec::with_capacity(src.layers.len());
        for l in &src.layers {
            layers.push(GpuLayer {
                attn_norm: dev.upload(l.attn_norm)?,
                ffn_norm: dev.upload(l.ffn_norm)?,
                wq: mat(l.wq)?,
                wk: mat(l.wk)?,
                wv: mat(l.wv)?,
                wo: mat(l.wo)?,
                bq: opt(l.bq)?,
                bk: opt(l.bk)?,
                bv: opt(l.bv)?,
                w_gate: mat(l.w_gate)?,
                w_up: mat(l.w_up)?,
                w_down: mat(l.w_down)?,
            });
        }
        let mut m = GpuModel {
            dev: dev.clone(),
            config: src.config.clone(),
            embd: mat(src.embd)?,
            output: mat(src.output)?,
            output_norm: dev.upload(src.output_norm)?,
            layers,
            valid: dev.upload(&valid)?,
            subset: None,
            mma: dev.has_tensor_cores(),
            graphs: AtomicBool::new(std::env::var("CASCADE_GPU_GRAPHS").map_or(true, |v| v != "0")),
            weight_bytes: 0,
        };
        m.weight_bytes = m.count_bytes();
        Ok(m)
    }

    fn count_bytes(&self) -> usize {
        let mut n = self.embd.bytes() + self.output.bytes() + self.output_norm.len();
        for l in &self.layers {
            n += l.attn_norm.len() + l.ffn_norm.len();
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .iter()
                .map(|m| m.bytes())
                .sum::<usize>();
            n += [&l.bq, &l.bk, &l.bv]
                .iter()
                .filter_map(|b| b.as_ref().map(|b| b.len()))
                .sum::<usize>();
        }
        n
    }

    /// Whether prompt rows take other kernels than generated ones (the tensor-core products):
    /// then a position's keys and values depend on whether it was a prompt's, and only a prompt's
    /// positions may be reused as another prompt's cached prefix.
    pub fn prompt_kernels_differ(&self) -> bool {
        self.mma
    }

    /// A KV pool of `n_blocks` blocks of `block` positions for every layer.
    pub fn new_kv(&self, n_blocks: usize, block: usize) -> Result<GpuKv> {
        let bytes = n_blocks
            .checked_mul(block)
            .and_then(|x| x.checked_mul(self.config.kv_dim())?.checked_mul(4))
            .ok_or_else(|| {
                GpuError::BadBatch(format!(
                    "a KV pool of {n_blocks} blocks of {block} overflows"
                ))
            })?;
        let mut k = Vec::with_capacity(self.config.n_layers);
        let mut v = Vec::with_capacity(self.config.n_layers);
        for _ in 0..self.config.n_layers {
            k.push(self.dev.alloc(bytes)?);
            v.push(self.dev.alloc(bytes)?);
        }
        Ok(GpuKv {
            k,
            v,
            n_blocks,
            block,
            kv_dim: self.config.kv_dim(),
            dev: self.dev.clone(),
        })
    }
}

/// Keys per piece of a row's split attention (fixed per model: batch invariance).
const KEYS_PER_SPLIT: u32 = 256;

/// Host-side index arrays of a batch. Rows are in pass order: every generated row (in sequence
/// order), then every prompt row, so that each kind's products run over one contiguous range.
struct BatchIndex {
    ids: Vec<i32>,
    pos: Vec<i32>,
    slots: Vec<i32>,
    tables: Vec<i32>,
    table_start: Vec<i32>,
    seq_of_row: Vec<i32>,
    /// Rows that want logits: those copied back whole first, then those reduced to an argmax,
    /// then those reduced to their top k.
    out_rows: Vec<i32>,
    /// How many of `out_rows` are of each kind.
    rows: OutRows,
    /// The sequence of each of `out_rows`.
    out_seq: Vec<usize>,
    /// Keys of the longest row (its position + 1).
    max_keys: usize,
    /// Generated rows (first) and prompt rows (after them).
    split: RowSplit,
}

fn check_seq(si: usize, q: &GpuSeq, kv: &GpuKv, vocab: usize) -> Result<()> {
    let end = q.past + q.tokens.len();
    if q.tokens.is_empty() || end > q.table.len() * kv.block {
        return Err(GpuError::BadBatch(format!(
            "sequence {si}: {} tokens after {} do not fit {} blocks of {}",
            q.tokens.len(),
            q.past,
            q.table.len(),
            kv.block
        )));
    }
    if let Some(b) = q.table.iter().find(|&&b| b as usize >= kv.n_blocks) {
        return Err(GpuError::BadBatch(format!(
            "block {b} outside a pool of {}",
            kv.n_blocks
        )));
    }
    if let Some(t) = q.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(GpuError::BadBatch(format!(
            "token {t} outside a vocabulary of {vocab}"
        )));
    }
    if q.want.end > q.tokens.len() {
        return Err(GpuError::BadBatch(format!(
            "logit rows {:?} past {} tokens",
            q.want,
            q.tokens.len()
        )));
    }
    Ok(())
}

/// The batch's index arrays; with `mma`, prompt rows go after the generated ones.
fn index_batch(seqs: &[GpuSeq], kv: &GpuKv, vocab: usize, mma: bool) -> Result<BatchIndex> {
    for (si, q) in seqs.iter().enumerate() {
        check_seq(si, q, kv, vocab)?;
        select::check_k(si, q.reduce)?;
    }
    // A sequence's prompt rows are a prefix of its rows (positions past.. below prompt).
    let prompt_rows = |q: &GpuSeq| match mma {
        true => q.prompt.saturating_sub(q.past).min(q.tokens.len()),
        false => 0,
    };
    let n: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    let n_prompt: usize = seqs.iter().map(prompt_rows).sum();
    let mut ix = BatchIndex {
        ids: vec![0; n],
        pos: vec![0; n],
        slots: vec![0; n],
        tables: vec![],
        table_start: vec![],
        seq_of_row: vec![0; n],
        out_rows: vec![],
        rows: OutRows::default(),
        out_seq: vec![],
        max_keys: 0,
        split: RowSplit {
            dp4a: n - n_prompt,
            mma: n_prompt,
        },
    };
    // Argmax rows, then top-k rows, after the whole ones: (row, sequence, k).
    let (mut reduced, mut top) = (Vec::new(), Vec::new());
    let (mut next_gen, mut next_prompt) = (0, n - n_prompt);
    for (si, q) in seqs.iter().enumerate() {
        ix.table_start.push(ix.tables.len() as i32);
        ix.tables.extend(q.table.iter().map(|&b| b as i32));
        let mut rows = Vec::with_capacity(q.tokens.len());
        let np = prompt_rows(q);
        for (t, &id) in q.tokens.iter().enumerate() {
            let next = if t < np {
                &mut next_prompt
            } else {
                &mut next_gen
            };
            let (r, p) = (*next, q.past + t);
            *next += 1;
            ix.ids[r] = id as i32;
            ix.pos[r] = p as i32;
            ix.slots[r] = (q.table[p / kv.block] as usize * kv.block + p % kv.block) as i32;
            ix.seq_of_row[r] = si as i32;
            rows.push(r as i32);
        }
        let want = q.want.clone().map(|t| rows[t]);
        match q.reduce {
            RowReduce::Whole => {
                ix.out_seq.extend(want.clone().map(|_| si));
                ix.out_rows.extend(want);
            }
            RowReduce::Argmax => reduced.extend(want.map(|r| (r, si))),
            RowReduce::TopK(kk) => top.extend(want.map(|r| (r, si, kk))),
        }
        ix.max_keys = ix.max_keys.max(q.past + q.tokens.len());
    }
    ix.rows.whole = ix.out_rows.len();
    ix.rows.argmax = reduced.len();
    for (r, si) in reduced {
        ix.out_rows.push(r);
        ix.out_seq.push(si);
    }
    for (r, si, kk) in top {
        ix.out_rows.push(r);
        ix.out_seq.push(si);
        ix.rows.top_k.push(kk);
    }
    Ok(ix)
}

/// The device buffers of one pass.
struct Pass {
    x: DevBuf,
    xn: DevBuf,
    q: DevBuf,
    k: DevBuf,
    v: DevBuf,
    attn: DevBuf,
    proj: DevBuf,
    gate: DevBuf,
    up: DevBuf,
    mm: Matmul,
    ids: DevBuf,
    pos: DevBuf,
    slots: DevBuf,
    tables: DevBuf,
    table_start: DevBuf,
    seq_of_row: DevBuf,
    out_rows: DevBuf,
    part_o: DevBuf,
    part_ml: DevBuf,
    n: usize,
    /// Which kernels the layers' products take for the rows.
    split: RowSplit,
    max_keys: usize,
}

impl GpuModel {
    fn begin(&self, ws: &mut Workspace, ix: &BatchIndex) -> Result<Pass> {
        let c = &self.config;
        let n = ix.ids.len();
        let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let d = &self.dev;
        let f = |ws: &mut Workspace, s, len: usize| ws.take(d, s, len * 4);
        let ints = |ws: &mut Workspace, s, v: &[i32]| -> Result<DevBuf> {
            let b = ws.take(d, s, v.len().max(1) * 4)?;
            d.write(&b, 0, v)?;
            Ok(b)
        };
        let widest = h.max(qd).max(ff);
        let splits = k::attention_splits(ix.max_keys as u32, KEYS_PER_SPLIT) as usize;
        let split = k::attention_split_scratch(n, c.n_heads, c.head_dim, splits);
        Ok(Pass {
            x: f(ws, Slot::X, n * h)?,
            xn: f(ws, Slot::Xn, n * h)?,
            q: f(ws, Slot::Q, n * qd)?,
            k: f(ws, Slot::K, n * kvd)?,
            v: f(ws, Slot::V, n * kvd)?,
            attn: f(ws, Slot::Attn, n * qd)?,
            proj: f(ws, Slot::Proj, n * h)?,
            gate: f(ws, Slot::Gate, n * ff)?,
            up: f(ws, Slot::Up, n * ff)?,
            mm: Matmul::new(ws.take(d, Slot::Acts, Matmul::acts_bytes(n, widest))?),
            ids: ints(ws, Slot::Ids, &ix.ids)?,
            pos: ints(ws, Slot::Pos, &ix.pos)?,
            slots: ints(ws, Slot::Slots, &ix.slots)?,
            tables: ints(ws, Slot::Tables, &ix.tables)?,
            table_start: ints(ws, Slot::TableStart, &ix.table_start)?,
            seq_of_row: ints(ws, Slot::SeqOfRow, &ix.seq_of_row)?,
            out_rows: ints(ws, Slot::OutRows, &ix.out_rows)?,
            part_o: f(ws, Slot::PartO, split.0)?,
            part_ml: f(ws, Slot::PartMl, split.1)?,
            n,
            split: ix.split,
            max_keys: ix.max_keys,
        })
    }

    fn end(ws: &mut Workspace, p: Pass) {
        for (s, b) in [
            (Slot::X, p.x),
            (Slot::Xn, p.xn),
            (Slot::Q, p.q),
            (Slot::K, p.k),
            (Slot::V, p.v),
            (Slot::Attn, p.attn),
            (Slot::Proj, p.proj),
            (Slot::Gate, p.gate),
            (Slot::Up, p.up),
            (Slot::Acts, p.mm.into_buf()),
            (Slot::Ids, p.ids),
            (Slot::Pos, p.pos),
            (Slot::Slots, p.slots),
            (Slot::Tables, p.tables),
            (Slot::TableStart, p.table_start),
            (Slot::SeqOfRow, p.seq_of_row),
            (Slot::OutRows, p.out_rows),
            (Slot::PartO, p.part_o),
            (Slot::PartMl, p.part_ml),
        ] {
            ws.put(s, b);
        }
    }

    /// One forward pass over a ragged batch (the CPU engine's `forward_batch`): writes the new
    /// tokens' keys and values into their blocks of `kv` and puts the `want` rows of each
    /// sequence in `out` as its `reduce` says: logits `[rows][vocab_size]` in `out.logits`, the
    /// greedy choice (the largest valid logit, lowest id on ties) in `out.argmax`, the k largest
    /// valid logits in `out.top`; each kind in the order of its sequences.
    pub fn forward_batch(
        &self,
        kv: &GpuKv,
        seqs: &[GpuSeq],
        ws: &mut Workspace,
        out: PassOut,
    ) -> Result<()> {
        let c = &self.config;
        // A pool made by another model (another KV width or depth) would be read and written
        // past its buffers by the kernels.
        if kv.kv_dim != c.kv_dim() || kv.k.len() != c.n_layers {
            return Err(GpuError::BadBatch(format!(
                "a KV pool of {} layers of width {} for a model of {} layers of width {}",
                kv.k.len(),
                kv.kv_dim,
                c.n_layers,
                c.kv_dim()
            )));
        }
        let ix = index_batch(seqs, kv, c.vocab_size, self.mma)?;
        let mut p = self.begin(ws, &ix)?;
        let extras: Vec<&[u32]> = ix.out_seq.iter().map(|&s| seqs[s].extra).collect();
        let result = self.run(kv, &mut p, ws, (&ix.rows, &extras), out);
        Self::end(ws, p);
        result
    }

    fn run(
        &self,
        kv: &GpuKv,
        p: &mut Pass,
        ws: &mut Workspace,
        (rows, extras): (&OutRows, &[&[u32]]),
        out: PassOut,
    ) -> Result<()> {
        let c = &self.config;
        let h = c.hidden_size;
        self.layers_as_graph(kv, p, ws)?;
        out.logits.clear();
        out.argmax.clear();
        out.top.clear();
        let m = rows.len();
        if m == 0 {
            return Ok(());
        }
        // The rows that want logits, gathered, normed and projected.
        let d = &self.dev;
        d.launch(
            "get_rows_f32",
            k::get_rows(h as u32, m as u32),
            Args::new()
                .buf(&p.x)
                .buf(&p.out_rows)
                .buf(&p.proj)
                .int(h)
                .int(m),
        )?;
        self.rms_norm(&p.proj, &self.output_norm, &p.xn, m)?;
        let logits = ws.take(d, Slot::Logits, m * c.vocab_size * 4)?;
        p.mm.reset();
        let r = match &self.subset {
            None => self
                .output
                .apply(d, &mut p.mm, &p.xn, &logits, RowSplit::dp4a(m)),
            Some(sub) => self.restricted(sub, ws, p, extras, &logits),
        }
        .and_then(|()| self.read_rows(ws, &logits, rows, out));
        ws.put(Slot::Logits, logits);
        r
    }

    /// The embedding and every layer: launches only (what a graph holds).
    fn layers_of(&self, kv: &GpuKv, p: &mut Pass) -> Result<()> {
        self.embd.get_rows(&self.dev, &p.ids, &p.x, p.n)?;
        for (l, layer) in self.layers.iter().enumerate() {
            self.attention_block(l, layer, kv, p)?;
            self.mlp_block(layer, p)?;
        }
        Ok(())
    }

    /// The embedding and the layers, as one graph where the pass is small. A graph that fails
    /// (to capture, instantiate or launch: nothing of the pass has run then, and every kernel of
    /// it writes what it would write again) turns graphs off for this model, with a warning, and
    /// the pass runs kernel by kernel.
    fn layers_as_graph(&self, kv: &GpuKv, p: &mut Pass, ws: &mut Workspace) -> Result<()> {
        if !self.graphs.load(Ordering::Relaxed) || p.n > GRAPH_MAX_ROWS {
            return self.layers_of(kv, p);
        }
        match self.dev.run_graph(&mut ws.graphs, || self.layers_of(kv, p)) {
            Err(e @ GpuError::Driver(_)) => {
                tracing::warn!("CUDA graphs off for this model: {e}");
                self.graphs.store(false, Ordering::Relaxed);
                self.layers_of(kv, p)
            }
            r => r,
        }
    }

    /// Turns graphs on or off for this model's passes (on unless `CASCADE_GPU_GRAPHS=0`).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs.store(on, Ordering::Relaxed);
    }

    fn rms_norm(&self, x: &DevBuf, w: &DevBuf, y: &DevBuf, n: usize) -> Result<()> {
        let c = &self.config;
        self.dev.launch(
            "rms_norm",
            k::rms_norm(n as u32),
            Args::new()
                .buf(x)
                .buf(w)
                .buf(y)
                .int(c.hidden_size)
                .f32(c.rms_eps)
                .int(n),
        )
    }

    fn add_bias(&self, x: &DevBuf, b: &Option<DevBuf>, cols: usize, n: usize) -> Result<()> {
        let Some(b) = b else { return Ok(()) };
        self.dev.launch(
            "add_bias",
            k::add_bias(cols as u32, n as u32),
            Args::new().buf(x).buf(b).int(cols).int(n),
        )
    }

    fn rope(&self, x: &DevBuf, pos: &DevBuf, n: usize, heads: usize) -> Result<()> {
        let c = &self.config;
        let neox = matches!(c.rope_style, RopeStyle::Neox) as i32;
        self.dev.launch(
            "rope",
            k::rope(n as u32),
            Args::new()
                .buf(x)
                .buf(pos)
                .int(n)
                .int(heads)
                .int(c.head_dim)
                .f32(c.rope_theta)
                .i32(neox),
        )
    }

    fn add_inplace(&self, x: &DevBuf, y: &DevBuf, len: usize) -> Result<()> {
        self.dev.launch(
            "add_inplace",
            k::elementwise(len as u32),
            Args::new().buf(x).buf(y).int(len),
        )
    }

    fn attention_block(&self, l: usize, layer: &GpuLayer, kv: &GpuKv, p: &mut Pass) -> Result<()> {
        let c = &self.config;
        let (d, n) = (&self.dev, p.n);
        self.rms_norm(&p.x, &layer.attn_norm, &p.xn, n)?;
        p.mm.reset();
        layer.wq.apply(d, &mut p.mm, &p.xn, &p.q, p.split)?;
        layer.wk.apply(d, &mut p.mm, &p.xn, &p.k, p.split)?;
        layer.wv.apply(d, &mut p.mm, &p.xn, &p.v, p.split)?;
        self.add_bias(&p.q, &layer.bq, c.q_dim(), n)?;
        self.add_bias(&p.k, &layer.bk, c.kv_dim(), n)?;
        self.add_bias(&p.v, &layer.bv, c.kv_dim(), n)?;
        self.rope(&p.q, &p.pos, n, c.n_heads)?;
        self.rope(&p.k, &p.pos, n, c.n_kv_heads)?;
        d.launch(
            "kv_store",
            k::kv_store(c.kv_dim() as u32, n as u32),
            Args::new()
                .buf(&p.k)
                .buf(&p.v)
                .buf(&kv.k[l])
                .buf(&kv.v[l])
                .buf(&p.slots)
                .int(c.kv_dim())
                .int(n),
        )?;
        self.attention(l, kv, p)?;
        p.mm.reset();
        layer.wo.apply(d, &mut p.mm, &p.attn, &p.proj, p.split)?;
        self.add_inplace(&p.x, &p.proj, n * c.hidden_size)
    }

    /// Paged attention of every row, split along the keys in fixed pieces of
    /// [`KEYS_PER_SPLIT`] (a row's splits depend on its own length only, so its result does not
    /// depend on the batch; one split is `attention_paged`'s bits) so that a few long rows still
    /// spread over many blocks, then the splits merged in order.
    fn attention(&self, l: usize, kv: &GpuKv, p: &Pass) -> Result<()> {
        let c = &self.config;
        let (d, n) = (&self.dev, p.n);
        let kps = KEYS_PER_SPLIT;
        let splits = k::attention_splits(p.max_keys as u32, kps) as usize;
        let (po, pm) = k::attention_split_scratch(n, c.n_heads, c.head_dim, splits);
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        if po * 4 > p.part_o.len() || pm * 4 > p.part_ml.len() {
            return Err(GpuError::BadBatch(
                "attention split scratch too small".into(),
            ));
        }
        d.launch(
            "attention_paged_split",
            k::attention_paged_split(n as u32, c.n_kv_heads as u32, p.max_keys as u32, kps),
            Args::new()
                .buf(&p.q)
                .buf(&kv.k[l])
                .buf(&kv.v[l])
                .buf(&p.tables)
                .buf(&p.seq_of_row)
                .buf(&p.pos)
                .buf(&p.table_start)
                .buf(&p.part_o)
                .buf(&p.part_ml)
                .int(n)
                .int(c.n_heads)
                .int(c.n_kv_heads)
                .int(c.head_dim)
                .int(kv.block)
                .f32(scale)
                .i32(kps as i32),
        )?;
        d.launch(
            "attention_combine",
            k::attention_combine(n as u32, c.n_heads as u32),
            Args::new()
                .buf(&p.part_o)
                .buf(&p.part_ml)
                .buf(&p.pos)
                .buf(&p.attn)
                .int(n)
                .int(c.n_heads)
                .int(c.head_dim)
                .i32(kps as i32)
                .int(splits),
        )
    }

    fn mlp_block(&self, layer: &GpuLayer, p: &mut Pass) -> Result<()> {
        let c = &self.config;
        let (d, n, ff) = (&self.dev, p.n, c.intermediate_size);
        self.rms_norm(&p.x, &layer.ffn_norm, &p.xn, n)?;
        p.mm.reset();
        layer.w_gate.apply(d, &mut p.mm, &p.xn, &p.gate, p.split)?;
        layer.w_up.apply(d, &mut p.mm, &p.xn, &p.up, p.split)?;
        d.launch(
            "silu_mul",
            k::elementwise((n * ff) as u32),
            Args::new().buf(&p.gate).buf(&p.up).int(n * ff),
        )?;
        p.mm.reset();
        layer
            .w_down
            .apply(d, &mut p.mm, &p.gate, &p.proj, p.split)?;
        self.add_inplace(&p.x, &p.proj, n * c.hidden_size)
    }
}

#[cfg(all(test, feature = "shim"))]
mod tests {
    use cascade_kernels::interleave::interleave8;
    use cascade_kernels::quant::random_data;
    use cascade_weights::DType;

    use super::*;

    /// An interleaved matrix staged a few groups at a time (and a row-major one in odd pieces)
    /// arrives in row order, byte for byte.
    #[test]
    fn staged_uploads_put_every_matrix_back_in_row_order() {
        let dev = Device::shim();
        for dtype in [DType::Q4K, DType::Q6K] {
            let (rows, cols) = (40, 512);
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let data = random_data(dtype, rows * cols, 1.0, || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            });
            let inter = interleave8(dtype, &data, rows, cols).unwrap();
            assert_ne!(inter, data);
            let group = 8 * data.len() / rows;
            for staging in [1, group, 2 * group + 1, 1 << 20] {
                let buf = upload_rows(
                    &dev,
                    dtype,
                    Layout::Interleaved8,
                    &inter,
                    [rows, cols],
                    staging,
                )
                .unwrap();
                let mut back = vec![0u8; data.len()];
                dev.read(&buf, 0, &mut back).unwrap();
                assert!(back == data, "{dtype:?} staged by {staging}");
            }
            let buf = upload_rows(&dev, dtype, Layout::Rows, &data, [rows, cols], 1000).unwrap();
            let mut back = vec![0u8; data.len()];
            dev.read(&buf, 0, &mut back).unwrap();
            assert!(back == data, "{dtype:?} rows");
        }
    }
}
