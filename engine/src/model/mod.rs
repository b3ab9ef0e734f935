//! The Llama family (Llama/SmolLM2 and Qwen2): one forward pass over any number of new tokens,
//! returning logits for every position asked for.

use std::path::Path;

use cascade_kernels::ops::{self, AttentionShape};
use cascade_kernels::quant::dequantize;
use cascade_kernels::{matmul, matmul_q8, Kernel, QMatrix};
use cascade_weights::{
    DType, ModelConfig, ModelFiles, OpenOptions, TensorView, Tokenizer, WeightStore,
};

use crate::error::{EngineError, Result};
use crate::kv_cache::{KvCache, KvStorage};
use crate::sampler::{argmax_valid, top_candidates};
use crate::scratch::{sized, Scratch, SharedInput};

mod gpu;
#[cfg(test)]
mod tests;

pub(crate) use gpu::{DeviceKv, OnDevice};

/// How activations enter the matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Quantized to 8-bit blocks and multiplied with integer dot products (as llama.cpp does):
    /// the fast path. Weight types without an integer kernel use the f32 path.
    #[default]
    Int8,
    /// Kept in f32; weights dequantized block by block. Exact up to float rounding: the path the
    /// numpy reference checks.
    F32,
}

/// Which positions of a forward pass get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last new token (prefill before sampling).
    Last,
    /// Every new token (verification, perplexity).
    All,
    /// New tokens `from..` (perplexity scores a window's second half).
    From(usize),
    /// None (a chunk of a prompt whose end comes in a later pass).
    None,
}

impl Logits {
    /// The new-token rows of an `n`-token pass that get logits.
    pub fn rows(&self, n: usize) -> std::ops::Range<usize> {
        match *self {
            Logits::Last => n - 1..n,
            Logits::All => 0..n,
            Logits::From(f) => f.min(n - 1)..n,
            Logits::None => n..n,
        }
    }
}

/// How a sequence's logit rows come back from a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduce {
    /// Every logit: `vocab_size` values per row, in [`Outputs::logits`].
    #[default]
    Logits,
    /// The greedy choice alone, in [`Outputs::argmax`]: the valid id with the largest logit
    /// (lowest id on ties), what a greedy sampler picks. On a device the rows are reduced there,
    /// so a greedy step copies back one id per row instead of the vocabulary's logits.
    Argmax,
    /// The k (1 to [`MAX_REDUCED_TOP_K`]) largest valid logits, in [`Outputs::top`]: (id, logit)
    /// by descending logit, lowest id on ties, padded with ([`crate::sampler::NO_CANDIDATE`], -inf); what a
    /// sampler with this top-k cut draws from ([`crate::sampler::Sampler::sample_candidates`]).
    /// On a device the rows are reduced there.
    TopK(usize),
}

/// The largest k a row is reduced to ([`Reduce::TopK`]; a device's top-k kernel takes up to it).
pub const MAX_REDUCED_TOP_K: usize = cascade_gpu::kernels::TOPK_MAX as usize;

/// What a forward pass returns: the rows of the sequences with [`Reduce::Logits`] (each
/// sequence's `want` rows in turn, `vocab_size` values each), the argmax of the rows of those
/// with [`Reduce::Argmax`], and the top k of the rows of those with [`Reduce::TopK`] (k entries
/// a row), each in turn.
#[derive(Debug, Default)]
pub struct Outputs {
    pub logits: Vec<f32>,
    pub argmax: Vec<u32>,
    pub top: Vec<(u32, f32)>,
}

/// One sequence's part of a forward pass's [`Outputs`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows<'a> {
    Logits(&'a [f32]),
    Argmax(&'a [u32]),
    /// Each row's k candidates in turn.
    TopK {
        k: usize,
        cands: &'a [(u32, f32)],
    },
}

impl Outputs {
    /// Splits the outputs into the parts of consecutive sequences, each given as its number of
    /// `want` rows and how they were reduced.
    pub(crate) fn split<'a>(
        &'a self,
        parts: impl IntoIterator<Item = (usize, Reduce)>,
        vocab: usize,
    ) -> Vec<Rows<'a>> {
        let (mut r, mut a, mut t) = (0, 0, 0);
        parts
            .into_iter()
            .map(|(n, reduce)| match reduce {
                Reduce::Logits => {
                    r += n;
                    Rows::Logits(&self.logits[(r - n) * vocab..r * vocab])
                }
                Reduce::Argmax => {
                    a += n;
                    Rows::Argmax(&self.argmax[a - n..a])
                }
                Reduce::TopK(k) => {
                    t += n * k;
                    Rows::TopK {
                        k,
                        cands: &self.top[t - n * k..t],
                    }
                }
            })
            .collect()
    }
}

/// One sequence's part of a batched forward pass: `tokens` at positions `past..`, keys and values
/// in the blocks of `table`.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub table: &'a [u32],
    pub past: usize,
    pub want: Logits,
    /// Whether the `want` rows come back whole or as their greedy choice.
    pub reduce: Reduce,
    /// Tokens whose logits this sequence also needs when the output layer is restricted
    /// ([`Model::restrict_output`]): its context's tokens (a topic's words are rarely among the
    /// most frequent tokens but come back in its answer). Empty: the subset alone.
    pub extra: &'a [u32],
    /// Positions below this are the request's prompt. The CPU ignores it; a device with tensor
    /// cores computes prompt rows with them and generated rows with the dp4a kernels (each
    /// kind bitwise the same in any batch; [`Model::prompt_kernels_differ`]).
    pub prompt: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    wq: TensorView,
    wk: TensorView,
    wv: TensorView,
    wo: TensorView,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    w_gate: TensorView,
    w_up: TensorView,
    w_down: TensorView,
}

/// A loaded model: config, tokenizer and views into the weight store.
pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
    embd: TensorView,
    output: TensorView,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// `valid[id]`: the id may be sampled (false for padding rows and unused tokens).
    valid: Vec<bool>,
    precision: Precision,
    /// Where the forward passes run when not on the CPU (`place_on`).
    device: Option<Box<OnDevice>>,
    /// The output layer restricted to some tokens (a draft's cheaper step, FR-Spec).
    output_subset: Option<OutputSubset>,
}

/// Rows `ids` (sorted) of the output matrix, copied in row order: logits are computed for these
/// tokens only, every other token's logit is -inf (probability 0).
struct OutputSubset {
    data: Vec<u8>,
    dtype: DType,
    cols: usize,
    ids: Vec<u32>,
}

fn small_f32(t: &TensorView, len: usize) -> Result<Vec<f32>> {
    if t.n_elements() != len {
        return Err(EngineError::BadTensor {
            name: t.name.clone(),
            reason: format!("has {} values, expected {len}", t.n_elements()),
        });
    }
    let mut out = vec![0f32; len];
    dequantize(t.dtype, t.bytes(), &mut out);
    Ok(out)
}

fn matrix(files: &ModelFiles, name: &str, rows: usize, cols: usize) -> Result<TensorView> {
    let t = files.tensor(name)?;
    if t.shape != [rows, cols] {
        return Err(EngineError::Weights(
            cascade_weights::WeightsError::ShapeMismatch {
                name: name.to_string(),
                expected: vec![rows, cols],
                actual: t.shape.clone(),
            },
        ));
    }
    Ok(t.clone())
}

/// A matrix view of a tensor, through the kernels' checked constructor (O(1): lengths only).
fn qmat(t: &TensorView) -> Result<QMatrix<'_>> {
    Ok(QMatrix::with_layout(
        t.dtype,
        t.bytes(),
        t.shape[0],
        t.shape[1],
        t.layout,
    )?)
}

impl Model {
    /// Opens a model through `store` (a `.gguf` file or a Hugging Face folder).
    pub fn load(store: &WeightStore, path: &Path, opts: &OpenOptions) -> Result<Model> {
        let files = store.open_model(path, opts)?;
        Model::from_files(files)
    }

    pub fn from_files(files: ModelFiles) -> Result<Model> {
        let c = files.config.clone();
        let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let embd = matrix(&files, "token_embd.weight", c.vocab_size, h)?;
        let output = if c.tied_embeddings {
            embd.clone()
        } else {
            matrix(&files, "output.weight", c.vocab_size, h)?
        };
        let output_norm = small_f32(files.tensor("output_norm.weight")?, h)?;
        // The layer count comes from the file: it sizes no allocation before the layers' tensors
        // are found (a hostile count fails at the first missing one).
        let mut layers = Vec::new();
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
                match files.get(&n(s)) {
                    Some(t) => small_f32(t, len).map(Some),
                    None => Ok(None),
                }
            };
            layers.push(Layer {
                attn_norm: small_f32(files.tensor(&n("attn_norm.weight"))?, h)?,
                ffn_norm: small_f32(files.tensor(&n("ffn_norm.weight"))?, h)?,
                wq: matrix(&files, &n("attn_q.weight"), q, h)?,
                wk: matrix(&files, &n("attn_k.weight"), kv, h)?,
                wv: matrix(&files, &n("attn_v.weight"), kv, h)?,
                wo: matrix(&files, &n("attn_output.weight"), h, q)?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                w_gate: matrix(&files, &n("ffn_gate.weight"), ff, h)?,
                w_up: matrix(&files, &n("ffn_up.weight"), ff, h)?,
                w_down: matrix(&files, &n("ffn_down.weight"), h, ff)?,
            });
        }
        let tokenizer = files.tokenizer.clone();
        let row_major = files
            .tensors()
            .filter(|t| crate::repack::would_interleave(t))
            .count();
        if row_major > 0 {
            tracing::info!(
                "{}: {row_major} Q4_K/Q6_K matrices are row-major (--no-repack, or the repacked copy \
                 could not be written); their products are faster interleaved",
                files.path.display()
            );
        }
        let valid = (0..c.vocab_size as u32)
            .map(|i| tokenizer.is_valid(i))
            .collect();
        Ok(Model {
            config: c,
            tokenizer,
            files,
            embd,
            output,
            output_norm,
            layers,
            valid,
            precision: Precision::default(),
            device: None,
            output_subset: None,
        })
    }

    /// Sets how activations enter the matrix products.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `out = x · Wᵀ` for `n` rows of `x`, with `input` caching the quantized `x`.
    fn project(
        &self,
        w: &TensorView,
        input: &mut SharedInput,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<()> {
        self.project_matrix(qmat(w)?, input, x, n, out)
    }

    fn project_matrix(
        &self,
        m: QMatrix,
        input: &mut SharedInput,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<()> {
        match (self.precision, Kernel::of(m.dtype())) {
            (Precision::Int8, Some(kernel)) => {
                let acts = input.get(kernel.act_block(), x, n, m.cols());
                matmul_q8(&m, acts, out)?;
            }
            _ => matmul(&m, x, n, out)?,
        }
        Ok(())
    }

    /// Rows of the logits (the padded vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Whether token `id` may be sampled.
    pub fn is_valid_token(&self, id: u32) -> bool {
        self.valid.get(id as usize).copied().unwrap_or(false)
    }

    pub fn valid_mask(&self) -> &[bool] {
        &self.valid
    }

    /// A KV cache for `capacity` positions (capped at the model's context length).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let mut c = KvCache::new(
            self.config.n_layers,
            self.config.kv_dim(),
            capacity.min(self.config.context_length),
        )?;
        if let Err(e) = self.attach_device_kv(&mut c.storage) {
            // The cache's first forward pass reports the missing pool as an error.
            tracing::error!("no device KV pool for a cache of {capacity}: {e}");
        }
        Ok(c)
    }

    /// Whether this model's forward passes run on a device (GPU or the host shim).
    pub fn on_device(&self) -> bool {
        self.device.is_some()
    }

    /// Whether a position's keys and values depend on whether it was a prompt's (the model runs
    /// on a device whose prompt rows take the tensor-core products): then only prompt positions
    /// may be reused as another prompt's cached prefix.
    pub fn prompt_kernels_differ(&self) -> bool {
        self.device_prompt_kernels_differ()
    }

    /// KV blocks of `block` positions for this model, on its device when it has one.
    pub(crate) fn new_storage(&self, block: usize, n_blocks: usize) -> Result<KvStorage> {
        let mut s = KvStorage::new(self.config.n_layers, self.config.kv_dim(), block, n_blocks)?;
        self.attach_device_kv(&mut s)?;
        Ok(s)
    }

    /// Runs `tokens` through the model on top of `cache`, appends them to the cache, and returns
    /// logits `[n][vocab_size]` for the positions `want` selects. The tokens count as generated
    /// ones ([`SeqInput::prompt`]); [`Model::forward_prompt`] for a prompt's.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, want: Logits) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.forward_into(tokens, cache, want, &mut logits)?;
        Ok(logits)
    }

    /// [`Model::forward`] of tokens that are (the rest of) a prompt: the cache then holds a
    /// prompt of `cache.len() + tokens.len()` positions.
    pub fn forward_prompt(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        want: Logits,
    ) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        let prompt = cache.len() + tokens.len();
        self.forward_rows(tokens, cache, want, prompt, &mut logits)?;
        Ok(logits)
    }

    /// [`Model::forward`] writing the logits into `logits` (resized to `[n][vocab_size]` for the
    /// positions `want` selects), so that a decode loop reuses one buffer: a fresh one per step
    /// costs a page-faulting or zeroing pass over up to `n * vocab_size` values.
    pub fn forward_into(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        want: Logits,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        self.forward_rows(tokens, cache, want, 0, logits)
    }

    /// [`Model::forward_into`] with the positions below `prompt` counted as a prompt's.
    pub fn forward_rows(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        want: Logits,
        prompt: usize,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let mut out = Outputs {
            logits: std::mem::take(logits),
            ..Outputs::default()
        };
        let result = self.forward_one(tokens, cache, (want, Reduce::Logits), prompt, &mut out);
        *logits = out.logits;
        result
    }

    /// [`Model::forward_rows`] with each row reduced to its greedy choice (the valid id with the
    /// largest logit, lowest on ties) in `ids`: on a device reduced there, so a row copies back
    /// one id. What greedy decoding and exact greedy verification take.
    pub fn forward_greedy(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        want: Logits,
        prompt: usize,
        ids: &mut Vec<u32>,
    ) -> Result<()> {
        let mut out = Outputs {
            argmax: std::mem::take(ids),
            ..Outputs::default()
        };
        let result = self.forward_one(tokens, cache, (want, Reduce::Argmax), prompt, &mut out);
        *ids = out.argmax;
        result
    }

    /// One sequence's forward over its cache, rows reduced as asked.
    fn forward_one(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        (want, reduce): (Logits, Reduce),
        prompt: usize,
        out: &mut Outputs,
    ) -> Result<()> {
        cache.reserve(tokens.len())?;
        let mut scratch = std::mem::take(&mut cache.scratch);
        let seq = SeqInput {
            tokens,
            table: &cache.table,
            past: cache.len(),
            want,
            reduce,
            extra: &[],
            prompt,
        };
        let result = self.forward_batch(&mut cache.storage, &[seq], &mut scratch, out);
        cache.scratch = scratch;
        if result.is_ok() {
            cache.advance(tokens.len());
        }
        result
    }

    /// Checks a batch before anything runs: tokens, positions and blocks.
    fn check_batch(&self, kv: &KvStorage, seqs: &[SeqInput]) -> Result<()> {
        for q in seqs {
            let n = q.tokens.len();
            if n == 0 {
                return Err(EngineError::EmptyPrompt);
            }
            let room = q.table.len() * kv.block();
            if q.past + n > room.min(self.config.context_length) {
                return Err(EngineError::CacheFull {
                    len: q.past,
                    adding: n,
                    capacity: room.min(self.config.context_length),
                });
            }
            if let Reduce::TopK(k) = q.reduce {
                if k == 0 || k > MAX_REDUCED_TOP_K {
                    return Err(EngineError::InvalidParam {
                        name: "top-k reduction",
                        reason: format!("{k} is outside 1..={MAX_REDUCED_TOP_K}"),
                    });
                }
            }
            if let Some(&b) = q.table.iter().find(|&&b| b as usize >= kv.n_blocks()) {
                return Err(EngineError::InvalidParam {
                    name: "block table",
                    reason: format!("block {b} outside a pool of {}", kv.n_blocks()),
                });
            }
            if let Some(&id) = q
                .tokens
                .iter()
                .find(|&&id| id as usize >= self.vocab_size())
            {
                return Err(EngineError::InvalidToken {
                    id,
                    vocab: self.vocab_size(),
                });
            }
        }
        Ok(())
    }

    /// One forward pass over a ragged batch: every sequence's new tokens go through the matrix
    /// products together (each weight row read once for all of them), attention runs per
    /// sequence over its own blocks of `kv`, and the keys and values of the new tokens are
    /// written into those blocks. `out` receives the `want` rows of each sequence in turn, whole
    /// or reduced as the sequence asks ([`Outputs`]). A row's results do not depend on the rest
    /// of the batch (the kernels are batch invariant): bitwise what the sequence would get alone.
    pub(crate) fn forward_batch(
        &self,
        kv: &mut KvStorage,
        seqs: &[SeqInput],
        s: &mut Scratch,
        out: &mut Outputs,
    ) -> Result<()> {
        self.check_batch(kv, seqs)?;
        if let Some(d) = &self.device {
            return self.forward_device(d, kv, seqs, out);
        }
        let c = &self.config;
        let n: usize = seqs.iter().map(|q| q.tokens.len()).sum();
        let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let mut positions = Vec::with_capacity(n);
        let mut attn = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for q in seqs {
            positions.extend(q.past..q.past + q.tokens.len());
            attn.push((row, q));
            row += q.tokens.len();
        }
        let embd = qmat(&self.embd)?;
        let x = sized(&mut s.x, n * h);
        for (t, &id) in seqs.iter().flat_map(|q| q.tokens).enumerate() {
            embd.dequant_row(id as usize, &mut x[t * h..(t + 1) * h]);
        }
        for buf in [&mut s.xn, &mut s.proj] {
            sized(buf, n * h);
        }
        for buf in [&mut s.q, &mut s.attn] {
            sized(buf, n * qd);
        }
        sized(&mut s.k, n * kvd);
        sized(&mut s.v, n * kvd);
        sized(&mut s.gate, n * ff);
        sized(&mut s.up, n * ff);
        let scores: usize = seqs
            .iter()
            .map(|q| ops::attention_scratch(q.tokens.len(), q.past, c.n_heads))
            .sum();
        sized(&mut s.scores, scores);
        for (l, layer) in self.layers.iter().enumerate() {
            self.attention_block(l, layer, kv, &attn, &positions, s)?;
            self.mlp_block(layer, s, n)?;
        }
        self.output_rows(seqs, s, &mut out.logits)?;
        self.reduce_rows(seqs, out);
        Ok(())
    }

    /// Replaces the logit rows of the sequences with [`Reduce::Argmax`] by their greedy choice,
    /// and those with [`Reduce::TopK`] by their top k (the device path reduces them on the
    /// device).
    fn reduce_rows(&self, seqs: &[SeqInput], out: &mut Outputs) {
        out.argmax.clear();
        out.top.clear();
        if seqs.iter().all(|q| q.reduce == Reduce::Logits) {
            return;
        }
        let v = self.config.vocab_size;
        let (mut src, mut dst) = (0, 0);
        for q in seqs {
            for _ in q.want.rows(q.tokens.len()) {
                match q.reduce {
                    Reduce::Argmax => {
                        let row = &out.logits[src * v..(src + 1) * v];
                        out.argmax.push(argmax_valid(row, &self.valid).unwrap_or(0));
                    }
                    Reduce::TopK(k) => {
                        let row = &out.logits[src * v..(src + 1) * v];
                        out.top.extend(top_candidates(row, &self.valid, k));
                    }
                    Reduce::Logits => {
                        out.logits.copy_within(src * v..(src + 1) * v, dst * v);
                        dst += 1;
                    }
                }
                src += 1;
            }
        }
        out.logits.truncate(dst * v);
    }

    /// Norm, Q/K/V, RoPE, the KV write and attention of one layer, added onto `s.x`.
    fn attention_block(
        &self,
        l: usize,
        layer: &Layer,
        kv: &mut KvStorage,
        seqs: &[(usize, &SeqInput)],
        positions: &[usize],
        s: &mut Scratch,
    ) -> Result<()> {
        let c = &self.config;
        let (n, kvd) = (positions.len(), c.kv_dim());
        ops::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.xn);
        s.input.reset();
        self.project(&layer.wq, &mut s.input, &s.xn, n, &mut s.q)?;
        self.project(&layer.wk, &mut s.input, &s.xn, n, &mut s.k)?;
        self.project(&layer.wv, &mut s.input, &s.xn, n, &mut s.v)?;
        for (x, b) in [
            (&mut s.q, &layer.bq),
            (&mut s.k, &layer.bk),
            (&mut s.v, &layer.bv),
        ] {
            if let Some(b) = b {
                ops::add_bias(x, b);
            }
        }
        let (theta, style) = (c.rope_theta, c.rope_style);
        ops::rope(&mut s.q, c.n_heads, c.head_dim, positions, theta, style);
        ops::rope(&mut s.k, c.n_kv_heads, c.head_dim, positions, theta, style);
        for &(row, q) in seqs {
            let rows = row * kvd..(row + q.tokens.len()) * kvd;
            kv.write(l, q.table, q.past, &s.k[rows.clone()], &s.v[rows]);
        }
        let batch: Vec<ops::AttnSeq> = seqs
            .iter()
            .map(|&(row, q)| ops::AttnSeq {
                row,
                n_tokens: q.tokens.len(),
                past: q.past,
                kv: kv.layer(l, q.table),
            })
            .collect();
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        ops::attention_batch(&s.q, &batch, shape, &mut s.attn, &mut s.scores);
        s.input.reset();
        self.project(&layer.wo, &mut s.input, &s.attn, n, &mut s.proj)?;
        ops::add_assign(&mut s.x, &s.proj);
        Ok(())
    }

    /// Norm and the gated MLP of one layer, added onto `s.x`.
    fn mlp_block(&self, layer: &Layer, s: &mut Scratch, n: usize) -> Result<()> {
        ops::rms_norm(&s.x, &layer.ffn_norm, self.config.rms_eps, &mut s.xn);
        s.input.reset();
        self.project(&layer.w_gate, &mut s.input, &s.xn, n, &mut s.gate)?;
        self.project(&layer.w_up, &mut s.input, &s.xn, n, &mut s.up)?;
        ops::silu_mul(&mut s.gate, &s.up);
        s.input.reset();
        self.project(&layer.w_down, &mut s.input, &s.gate, n, &mut s.proj)?;
        ops::add_assign(&mut s.x, &s.proj);
        Ok(())
    }

    /// The final norm and output layer for the rows each sequence wants.
    fn output_rows(&self, seqs: &[SeqInput], s: &mut Scratch, logits: &mut Vec<f32>) -> Result<()> {
        let c = &self.config;
        let h = c.hidden_size;
        let mut m = 0;
        let mut row = 0;
        for q in seqs {
            for r in q.want.rows(q.tokens.len()) {
                let src = (row + r) * h;
                let (dst, x) = (&mut s.proj[m * h..(m + 1) * h], &s.x[src..src + h]);
                dst.copy_from_slice(x);
                m += 1;
            }
            row += q.tokens.len();
        }
        let logits = sized(logits, m * c.vocab_size);
        if m == 0 {
            return Ok(());
        }
        ops::rms_norm(
            &s.proj[..m * h],
            &self.output_norm,
            c.rms_eps,
            &mut s.xn[..m * h],
        );
        s.input.reset();
        let Some(sub) = &self.output_subset else {
            return self.project(&self.output, &mut s.input, &s.xn[..m * h], m, logits);
        };
        let k = sub.ids.len();
        let w = QMatrix::new(sub.dtype, &sub.data, k, sub.cols)?;
        let part = sized(&mut s.scores, m * k);
        self.project_matrix(w, &mut s.input, &s.xn[..m * h], m, part)?;
        logits.fill(f32::NEG_INFINITY);
        for (row, vals) in logits
            .chunks_exact_mut(c.vocab_size)
            .zip(part.chunks_exact(k))
        {
            for (&id, &v) in sub.ids.iter().zip(vals) {
                row[id as usize] = v;
            }
        }
        self.extra_logits(seqs, s, logits)
    }

    /// The logits of each sequence's `extra` tokens outside the restricted output layer: their
    /// rows of the full matrix gathered and multiplied with that sequence's normed rows.
    fn extra_logits(&self, seqs: &[SeqInput], s: &mut Scratch, logits: &mut [f32]) -> Result<()> {
        let (Some(sub), c) = (&self.output_subset, &self.config) else {
            return Ok(());
        };
        let (h, t) = (c.hidden_size, &self.output);
        if !self.subset_extras() {
            return Ok(()); // an interleaved copy: the subset alone
        }
        let rb = t.bytes().len() / t.shape[0];
        let mut m = 0;
        for q in seqs {
            let rows = q.want.rows(q.tokens.len()).len();
            let ids: Vec<u32> = q
                .extra
                .iter()
                .copied()
                .filter(|&i| (i as usize) < c.vocab_size && sub.ids.binary_search(&i).is_err())
                .collect();
            if rows > 0 && !ids.is_empty() {
                let mut data = Vec::with_capacity(ids.len() * rb);
                for &i in &ids {
                    data.extend_from_slice(&t.bytes()[i as usize * rb..(i as usize + 1) * rb]);
                }
                let w = QMatrix::new(t.dtype, &data, ids.len(), h)?;
                let mut out = vec![0f32; rows * ids.len()];
                s.input.reset();
                self.project_matrix(
                    w,
                    &mut s.input,
                    &s.xn[m * h..(m + rows) * h],
                    rows,
                    &mut out,
                )?;
                for (r, vals) in out.chunks_exact(ids.len()).enumerate() {
                    let row = &mut logits[(m + r) * c.vocab_size..(m + r + 1) * c.vocab_size];
                    for (&id, &v) in ids.iter().zip(vals) {
                        row[id as usize] = v;
                    }
                }
            }
            m += rows;
        }
        Ok(())
    }

    /// Computes logits for the tokens `ids` only (every other token gets -inf): a draft's output
    /// layer reads `ids.len()` rows instead of the whole vocabulary (FR-Spec). The rows are
    /// copied once (and uploaded once on a device, which then computes the same logits).
    pub fn restrict_output(&mut self, ids: &[u32]) -> Result<()> {
        let t = &self.output;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(EngineError::InvalidToken {
                id: bad,
                vocab: rows,
            });
        }
        let rows_bytes: std::borrow::Cow<[u8]> = match t.layout {
            cascade_weights::Layout::Rows => std::borrow::Cow::Borrowed(t.bytes()),
            _ => std::borrow::Cow::Owned(cascade_kernels::interleave::deinterleave8(
                t.dtype,
                t.bytes(),
                rows,
                cols,
            )?),
        };
        let rb = rows_bytes.len() / rows;
        let mut data = Vec::with_capacity(ids.len() * rb);
        for &i in &ids {
            data.extend_from_slice(&rows_bytes[i as usize * rb..(i as usize + 1) * rb]);
        }
        self.output_subset = Some(OutputSubset {
            data,
            dtype: t.dtype,
            cols,
            ids,
        });
        self.restrict_device_output()
    }

    /// Whether a restricted output layer computes each sequence's context tokens too: from a
    /// row-ordered output matrix only (an interleaved copy gives the subset alone).
    fn subset_extras(&self) -> bool {
        self.output.layout == cascade_weights::Layout::Rows
    }

    /// Tokens the output layer computes (the vocabulary, or the subset of `restrict_output`).
    pub fn output_tokens(&self) -> usize {
        self.output_subset
            .as_ref()
            .map_or(self.config.vocab_size, |s| s.ids.len())
    }

    /// Bytes of the matrices one decode step reads: every weight but the embedding table, of
    /// which a step reads one row.
    pub fn step_weight_bytes(&self) -> usize {
        let embd = if self.config.tied_embeddings {
            0
        } else {
            self.embd.bytes().len()
        };
        self.weight_bytes() - embd
    }

    /// Multiply-adds of the matrix products per token (attention excluded).
    pub fn matmul_params(&self) -> usize {
        let l = &self.layers;
        let per_layer: usize = l
            .iter()
            .map(|x| {
                [&x.wq, &x.wk, &x.wv, &x.wo, &x.w_gate, &x.w_up, &x.w_down]
                    .iter()
                    .map(|t| t.n_elements())
                    .sum::<usize>()
            })
            .sum();
        per_layer + self.output.n_elements()
    }

    /// Bytes of the weights this model reads per token (every matrix once).
    pub fn weight_bytes(&self) -> usize {
        self.files.weight_bytes()
    }

    /// Counts tensors per type (for `inspect`).
    pub fn tensor_types(&self) -> Vec<(DType, usize)> {
        let mut counts: Vec<(DType, usize)> = Vec::new();
        for t in self.files.tensors() {
            match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, c)) => *c += 1,
                None => counts.push((t.dtype, 1)),
            }
        }
        counts.sort_by_key(|(d, _)| d.ggml_id());
        counts
    }
}
