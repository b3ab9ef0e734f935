//! The Llama family (Llama/SmolLM2 and Qwen2): one forward pass over any number of new tokens,
//! returning logits for every position asked for.

use std::path::Path;

use cascade_kernels::ops::{self, AttentionShape};
use cascade_kernels::quant::dequantize;
use cascade_kernels::{matmul, QMatrix};
use cascade_weights::{
    DType, ModelConfig, ModelFiles, OpenOptions, TensorView, Tokenizer, WeightStore,
};

use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;

/// Which positions of a forward pass get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last new token (prefill before sampling).
    Last,
    /// Every new token (verification, perplexity).
    All,
    /// New tokens `from..` (perplexity scores a window's second half).
    From(usize),
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

fn qmat(t: &TensorView) -> QMatrix<'_> {
    QMatrix {
        dtype: t.dtype,
        data: t.bytes(),
        rows: t.shape[0],
        cols: t.shape[1],
    }
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
        let mut layers = Vec::with_capacity(c.n_layers);
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
        })
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
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(
            self.config.n_layers,
            self.config.kv_dim(),
            capacity.min(self.config.context_length),
        )
    }

    /// Runs `tokens` through the model on top of `cache`, appends them to the cache, and returns
    /// logits `[n][vocab_size]` for the positions `want` selects.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, want: Logits) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        cache.reserve(n)?;
        let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let past = cache.len();
        let positions: Vec<usize> = (past..past + n).collect();

        let embd = qmat(&self.embd);
        let mut x = vec![0f32; n * h];
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= c.vocab_size {
                return Err(EngineError::InvalidToken {
                    id,
                    vocab: c.vocab_size,
                });
            }
            embd.dequant_row(id as usize, &mut x[t * h..(t + 1) * h]);
        }

        let mut xn = vec![0f32; n * h];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut attn = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * h];
        let mut gate = vec![0f32; n * ff];
        let mut up = vec![0f32; n * ff];
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            ops::rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut xn);
            matmul(&qmat(&layer.wq), &xn, n, &mut q)?;
            matmul(&qmat(&layer.wk), &xn, n, &mut k)?;
            matmul(&qmat(&layer.wv), &xn, n, &mut v)?;
            if let Some(b) = &layer.bq {
                ops::add_bias(&mut q, b);
            }
            if let Some(b) = &layer.bk {
                ops::add_bias(&mut k, b);
            }
            if let Some(b) = &layer.bv {
                ops::add_bias(&mut v, b);
            }
            ops::rope(
                &mut q,
                c.n_heads,
                c.head_dim,
                &positions,
                c.rope_theta,
                c.rope_style,
            );
            ops::rope(
                &mut k,
                c.n_kv_heads,
                c.head_dim,
                &positions,
                c.rope_theta,
                c.rope_style,
            );
            cache.write(l, &k, &v);
            let (kc, vc) = cache.layer(l, past + n);
            ops::attention(&q, kc, vc, past, shape, &mut attn);
            matmul(&qmat(&layer.wo), &attn, n, &mut proj)?;
            ops::add_assign(&mut x, &proj);

            ops::rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut xn);
            matmul(&qmat(&layer.w_gate), &xn, n, &mut gate)?;
            matmul(&qmat(&layer.w_up), &xn, n, &mut up)?;
            ops::silu_mul(&mut gate, &up);
            matmul(&qmat(&layer.w_down), &gate, n, &mut proj)?;
            ops::add_assign(&mut x, &proj);
        }
        cache.advance(n);

        let from = match want {
            Logits::Last => n - 1,
            Logits::All => 0,
            Logits::From(f) => f.min(n - 1),
        };
        let m = n - from;
        let mut last = vec![0f32; m * h];
        ops::rms_norm(&x[from * h..], &self.output_norm, c.rms_eps, &mut last);
        let mut logits = vec![0f32; m * c.vocab_size];
        matmul(&qmat(&self.output), &last, m, &mut logits)?;
        Ok(logits)
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
