//! The typed model configuration, read once from GGUF metadata or a `config.json`.
//! No code past the loader looks metadata up by string.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{Result, WeightsError};
use crate::gguf::Value;
use crate::store::TensorView;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "llama" | "LlamaForCausalLM" => Ok(Architecture::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
            other => Err(WeightsError::UnsupportedArchitecture {
                arch: other.to_string(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" rope, used by GGUF Llama files whose Q/K
    /// rows were permuted at conversion.
    Interleaved,
    /// Halves (i, i + d/2): GPT-NeoX / Hugging Face `rotate_half`.
    Neox,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    /// Rows of the embedding and output matrices (may exceed the tokenizer's real vocabulary).
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// The context the model was trained for.
    pub context_length: usize,
    /// Output projection shares the token embedding.
    pub tied_embeddings: bool,
    /// Q, K and V projections carry a bias (Qwen2).
    pub qkv_bias: bool,
}

fn meta<'a>(m: &'a BTreeMap<String, Value>, key: &str) -> Result<&'a Value> {
    m.get(key).ok_or_else(|| WeightsError::MissingMetadata {
        key: key.to_string(),
    })
}

fn meta_usize(m: &BTreeMap<String, Value>, key: &str) -> Result<usize> {
    meta(m, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| WeightsError::MetadataType {
            key: key.to_string(),
            expected: "an unsigned integer",
        })
}

fn meta_f32(m: &BTreeMap<String, Value>, key: &str) -> Result<f32> {
    meta(m, key)?
        .as_f64()
        .map(|v| v as f32)
        .ok_or_else(|| WeightsError::MetadataType {
            key: key.to_string(),
            expected: "a number",
        })
}

impl ModelConfig {
    pub fn from_gguf(
        m: &BTreeMap<String, Value>,
        tensors: &HashMap<String, TensorView>,
    ) -> Result<Self> {
        let arch_name = meta(m, "general.architecture")?.as_str().ok_or_else(|| {
            WeightsError::MetadataType {
                key: "general.architecture".into(),
                expected: "a string",
            }
        })?;
        let arch = Architecture::parse(arch_name)?;
        let a = arch.name();
        let hidden_size = meta_usize(m, &format!("{a}.embedding_length"))?;
        let n_heads = meta_usize(m, &format!("{a}.attention.head_count"))?;
        let n_kv_heads = match m.get(&format!("{a}.attention.head_count_kv")) {
            Some(_) => meta_usize(m, &format!("{a}.attention.head_count_kv"))?,
            None => n_heads,
        };
        let head_dim = match m.get(&format!("{a}.attention.key_length")) {
            Some(_) => meta_usize(m, &format!("{a}.attention.key_length"))?,
            None if n_heads > 0 => hidden_size / n_heads,
            None => 0,
        };
        let rope_theta = match m.get(&format!("{a}.rope.freq_base")) {
            Some(_) => meta_f32(m, &format!("{a}.rope.freq_base"))?,
            None => 10_000.0,
        };
        let embd = tensors
            .get("token_embd.weight")
            .ok_or_else(|| WeightsError::MissingTensor {
                name: "token_embd.weight".into(),
            })?;
        let cfg = ModelConfig {
            arch,
            vocab_size: embd.rows(),
            hidden_size,
            intermediate_size: meta_usize(m, &format!("{a}.feed_forward_length"))?,
            n_layers: meta_usize(m, &format!("{a}.block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_eps: meta_f32(m, &format!("{a}.attention.layer_norm_rms_epsilon"))?,
            rope_theta,
            rope_style: match arch {
                Architecture::Llama => RopeStyle::Interleaved,
                Architecture::Qwen2 => RopeStyle::Neox,
            },
            context_length: meta_usize(m, &format!("{a}.context_length"))?,
            tied_embeddings: !tensors.contains_key("output.weight"),
            qkv_bias: tensors.contains_key("blk.0.attn_q.bias"),
        };
        cfg.validate(Path::new("GGUF metadata"))?;
        Ok(cfg)
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path, json: &serde_json::Value, has_lm_head: bool) -> Result<Self> {
        let err = |reason: String| WeightsError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let get_usize = |k: &str| -> Result<usize> {
            json.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| err(format!("'{k}' missing or not an unsigned integer")))
        };
        let get_f32 = |k: &str, default: Option<f32>| -> Result<f32> {
            match json.get(k) {
                Some(v) => v
                    .as_f64()
                    .map(|v| v as f32)
                    .ok_or_else(|| err(format!("'{k}' is not a number"))),
                None => default.ok_or_else(|| err(format!("'{k}' missing"))),
            }
        };
        let arch_name = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| json.get("model_type").and_then(|a| a.as_str()))
            .ok_or_else(|| err("no 'architectures' or 'model_type'".into()))?;
        let arch = Architecture::parse(arch_name)?;
        if let Some(rs) = json.get("rope_scaling") {
            if !rs.is_null() {
                return Err(err(format!("rope_scaling {rs} is not supported")));
            }
        }
        let hidden_size = get_usize("hidden_size")?;
        let n_heads = get_usize("num_attention_heads")?;
        let n_kv_heads = match json.get("num_key_value_heads") {
            Some(_) => get_usize("num_key_value_heads")?,
            None => n_heads,
        };
        let head_dim = match json.get("head_dim") {
            Some(_) => get_usize("head_dim")?,
            None if n_heads > 0 => hidden_size / n_heads,
            None => 0,
        };
        let tie = json
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(!has_lm_head);
        let cfg = ModelConfig {
            arch,
            vocab_size: get_usize("vocab_size")?,
            hidden_size,
            intermediate_size: get_usize("intermediate_size")?,
            n_layers: get_usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_eps: get_f32("rms_norm_eps", Some(1e-6))?,
            rope_theta: get_f32("rope_theta", Some(10_000.0))?,
            rope_style: RopeStyle::Neox,
            context_length: get_usize("max_position_embeddings")?,
            tied_embeddings: tie || !has_lm_head,
            qkv_bias: arch == Architecture::Qwen2,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(WeightsError::Config {
                path: path.to_path_buf(),
                reason,
            })
        };
        if self.hidden_size == 0 || self.n_layers == 0 || self.n_heads == 0 || self.n_kv_heads == 0
        {
            return bad(format!("zero-sized model: {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > 512 {
            return bad(format!(
                "head dimension {} must be even, positive and at most 512",
                self.head_dim
            ));
        }
        if self.rms_eps.is_nan()
            || self.rms_eps <= 0.0
            || self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
        {
            return bad("rms epsilon and rope theta must be positive".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
