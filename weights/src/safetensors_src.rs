//! Hugging Face model folders: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`) and `tokenizer.json`. Tensors are renamed to the canonical
//! GGUF names so the model code sees one naming scheme.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype as StDtype;
use safetensors::SafeTensors;

use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{Result, WeightsError};
use crate::store::read_limited;
use crate::store::{TensorView, WeightStore};
use crate::tokenizer::Tokenizer;

/// The GGUF name of a Hugging Face Llama/Qwen2 tensor name, or None for tensors we do not use.
pub fn canonical_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let suffix = match rest {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{suffix}"))
}

fn st_err(path: &Path, reason: impl Into<String>) -> WeightsError {
    WeightsError::Safetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Largest `config.json` or shard index read (real ones are a few KiB to a few MiB).
const MAX_JSON_BYTES: u64 = 16 << 20;
/// Most shard files an index may name (the largest published models have a few hundred).
const MAX_SHARDS: usize = 4096;

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(WeightsError::NotFound { path: single });
    }
    let bytes = read_limited(
        &index,
        MAX_JSON_BYTES,
        "the size of model.safetensors.index.json in bytes",
    )?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| st_err(&index, format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| st_err(&index, "no weight_map"))?;
    let mut files = std::collections::BTreeSet::new();
    for v in map.values() {
        let f = v
            .as_str()
            .ok_or_else(|| st_err(&index, "weight_map value is not a string"))?;
        if f.contains('/') || f.contains("..") {
            return Err(st_err(
                &index,
                format!("shard name '{f}' leaves the folder"),
            ));
        }
        files.insert(dir.join(f));
        if files.len() > MAX_SHARDS {
            return Err(WeightsError::Limit {
                what: "the number of safetensors shards",
                value: files.len() as u64,
                limit: MAX_SHARDS as u64,
            });
        }
    }
    Ok(files.into_iter().collect())
}

pub(crate) fn open_folder(store: &WeightStore, dir: &Path) -> Result<crate::store::ModelFiles> {
    let cfg_path = dir.join("config.json");
    let cfg_bytes = read_limited(
        &cfg_path,
        MAX_JSON_BYTES,
        "the size of config.json in bytes",
    )?;
    let cfg_json: serde_json::Value =
        serde_json::from_slice(&cfg_bytes).map_err(|e| WeightsError::Config {
            path: cfg_path.clone(),
            reason: format!("not JSON: {e}"),
        })?;

    let mut tensors: HashMap<String, TensorView> = HashMap::new();
    for shard in shard_files(dir)? {
        let file = store.map(&shard)?;
        let bytes = file.bytes();
        let (header_len, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| st_err(&shard, e.to_string()))?;
        let data_start = 8 + header_len;
        for (name, info) in meta.tensors() {
            let Some(canon) = canonical_name(&name) else {
                continue;
            };
            let dtype = match info.dtype {
                StDtype::F32 => DType::F32,
                StDtype::F16 => DType::F16,
                StDtype::BF16 => DType::BF16,
                other => {
                    return Err(WeightsError::UnsupportedTensorType {
                        path: shard.clone(),
                        name: name.clone(),
                        ty: format!("{other:?}"),
                    })
                }
            };
            let (s, e) = info.data_offsets;
            let n: usize = info.shape.iter().product();
            if e < s || e - s != dtype.bytes_for(n) || data_start + e > bytes.len() {
                return Err(WeightsError::TensorOutOfBounds {
                    path: shard.clone(),
                    name: name.clone(),
                    start: (data_start + s) as u64,
                    end: (data_start + e) as u64,
                    len: bytes.len() as u64,
                });
            }
            tensors.insert(
                canon.clone(),
                WeightStore::view(
                    &file,
                    canon,
                    dtype,
                    info.shape.clone(),
                    data_start + s,
                    e - s,
                ),
            );
        }
    }
    let config =
        ModelConfig::from_hf_json(&cfg_path, &cfg_json, tensors.contains_key("output.weight"))?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_json_file(&tok_path, None)?;
    Ok(WeightStore::assemble(dir, config, tokenizer, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(
            canonical_name("model.layers.3.mlp.down_proj.weight").unwrap(),
            "blk.3.ffn_down.weight"
        );
        assert_eq!(canonical_name("lm_head.weight").unwrap(), "output.weight");
        assert_eq!(canonical_name("model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(canonical_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn an_index_naming_too_many_shards_is_refused_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let map: serde_json::Map<String, serde_json::Value> = (0..200_000)
            .map(|i| {
                (
                    format!("t{i}"),
                    serde_json::json!(format!("s{i}.safetensors")),
                )
            })
            .collect();
        let index = serde_json::json!({ "weight_map": map });
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        // Refused at the limit, before the shards are looked for (a set, not the quadratic
        // Vec::contains per entry that was here before).
        let e = shard_files(dir.path()).unwrap_err();
        assert!(
            matches!(e, WeightsError::Limit { limit, .. } if limit == MAX_SHARDS as u64),
            "{e}"
        );
    }
}
