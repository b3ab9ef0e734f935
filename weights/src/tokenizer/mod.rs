//! Tokenizers through the `tokenizers` crate, built from GGUF metadata (byte-level BPE with the
//! pre-tokenizer split rules llama.cpp uses for each `tokenizer.ggml.pre`) or from `tokenizer.json`.
//!
//! Besides ids, the tokenizer keeps each token's raw bytes, so that streamed text can be cut only at
//! UTF-8 boundaries (see [`StreamDecoder`]).

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    TokenizerImpl,
};

use crate::error::{Result, WeightsError};
use crate::gguf::Value;
use crate::store::read_limited;

mod pre;
mod stream;

use pre::Pre;
pub use stream::StreamDecoder;

/// The library's tokenizer with this crate's pre-tokenizer (regexes compiled once per process).
type Inner =
    TokenizerImpl<ModelWrapper, NormalizerWrapper, Pre, PostProcessorWrapper, DecoderWrapper>;

/// GGUF token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(v: i64) -> TokenKind {
        match v {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

/// Pre-tokenizer regexes, as llama.cpp uses them per `tokenizer.ggml.pre`.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Names of end-of-generation tokens recognised besides the declared EOS/EOT ids (as llama.cpp does).
const EOG_NAMES: [&str; 13] = [
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<end_of_utterance>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

/// The large, immutable parts of a tokenizer, shared by every clone.
#[derive(Debug)]
struct Vocab {
    inner: Inner,
    token_bytes: Vec<Vec<u8>>,
    kinds: Vec<TokenKind>,
    /// Merges, for comparing two models' tokenizers.
    merges: Vec<String>,
}

/// A tokenizer; cloning it is cheap (the vocabulary is shared).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: std::sync::Arc<Vocab>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Prepend BOS when encoding a prompt.
    pub add_bos: bool,
    eog: Vec<u32>,
    pub chat_template: Option<String>,
    /// Where it came from: "gguf (qwen2)" or a tokenizer.json path.
    pub source: String,
}

/// GPT-2's byte-to-unicode table: the char that stands for each byte in byte-level BPE tokens.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

fn char_to_byte() -> BTreeMap<char, u8> {
    byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// The raw bytes a byte-level token stands for; chars outside the table are kept as UTF-8.
fn byte_level_bytes(token: &str, map: &BTreeMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match map.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn tok_err(reason: impl Into<String>) -> WeightsError {
    WeightsError::Tokenizer {
        reason: reason.into(),
    }
}

/// Largest `tokenizer.json` (or `tokenizer_config.json`) read: real ones are a few MiB (Qwen2.5's
/// is 7 MiB); past this a file is refused before it is read.
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 64 << 20;

/// Most tokens a vocabulary may have (the largest real ones hold about 260k).
pub const MAX_VOCAB: usize = 1 << 22;

/// `tokenizers`' own reading of a `tokenizer.json`, and the JSON itself. tokenizers 0.22 panics
/// on some malformed JSON (an `expect` in its decoder's deserializer, found by the
/// `tokenizer_json` fuzzer: a syntax error, or an escape that is no Unicode scalar), so the JSON
/// is parsed whole first (once: the library reads the parsed value), and any other panic of the
/// library is turned into an error.
fn parse_tokenizer_json(json: &[u8], source: &str) -> Result<(Inner, serde_json::Value)> {
    use serde::Deserialize;
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| tok_err(format!("{source}: not JSON: {e}")))?;
    let parsed = std::panic::catch_unwind(|| Inner::deserialize(&value))
        .map_err(|_| tok_err(format!("{source}: the tokenizers library panicked on it")))?;
    let inner = parsed.map_err(|e| tok_err(format!("{source}: {e}")))?;
    Ok((inner, value))
}

/// Each token's raw bytes and kind, indexed by id.
fn json_token_table(inner: &Inner, source: &str) -> Result<(Vec<Vec<u8>>, Vec<TokenKind>)> {
    let n = inner.get_vocab_size(true);
    if n > MAX_VOCAB {
        return Err(tok_err(format!(
            "{source}: {n} tokens, more than the {MAX_VOCAB} supported"
        )));
    }
    let added = inner.get_added_tokens_decoder();
    let map = char_to_byte();
    let mut token_bytes = vec![Vec::new(); n];
    let mut kinds = vec![TokenKind::Unused; n];
    for (tok, id) in inner.get_vocab(true) {
        let (Some(slot), Some(kind)) =
            (token_bytes.get_mut(id as usize), kinds.get_mut(id as usize))
        else {
            continue;
        };
        match added.get(&id) {
            Some(a) => {
                *slot = a.content.as_bytes().to_vec();
                *kind = if a.special {
                    TokenKind::Control
                } else {
                    TokenKind::UserDefined
                };
            }
            None => {
                *slot = byte_level_bytes(&tok, &map);
                *kind = TokenKind::Normal;
            }
        }
    }
    Ok((token_bytes, kinds))
}

/// `model.merges` of a `tokenizer.json`, each as "a b" (either spelling the format allows).
fn json_merges(json: &serde_json::Value) -> Vec<String> {
    let Some(list) = json.pointer("/model/merges").and_then(|m| m.as_array()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => Some(
                p.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        })
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer described by GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(m: &BTreeMap<String, Value>) -> Result<Tokenizer> {
        let model = m
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(tok_err(format!(
                "tokenizer model '{model}' is not supported (supported: gpt2 byte-level BPE)"
            )));
        }
        let tokens: Vec<&str> = m
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| tok_err("missing tokenizer.ggml.tokens"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| tok_err("tokenizer.ggml.tokens holds a non-string"))
            })
            .collect::<Result<_>>()?;
        let kinds: Vec<TokenKind> =
            match m.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
                Some(a) if a.len() == tokens.len() => a
                    .iter()
                    .map(|v| TokenKind::from_gguf(v.as_i64().unwrap_or(1)))
                    .collect(),
                Some(a) => {
                    return Err(tok_err(format!(
                        "{} token types for {} tokens",
                        a.len(),
                        tokens.len()
                    )))
                }
                None => vec![TokenKind::Normal; tokens.len()],
            };
        let merges: Vec<String> = m
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .ok_or_else(|| tok_err("missing tokenizer.ggml.merges"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| tok_err("tokenizer.ggml.merges holds a non-string"))
            })
            .collect::<Result<_>>()?;
        let pre = m
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let splits: &[&str] = match pre {
            "qwen2" | "deepseek-r1-qwen" => &[QWEN2_SPLIT],
            "llama3" | "llama-bpe" | "smaug-bpe" => &[LLAMA3_SPLIT],
            "smollm" => &[r"\p{N}", GPT2_SPLIT],
            "gpt2" | "default" => &[GPT2_SPLIT],
            other => {
                return Err(tok_err(format!(
                    "pre-tokenizer '{other}' is not supported (supported: qwen2, llama-bpe, smollm, gpt2)"
                )))
            }
        };

        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.to_string(), i as u32);
        }
        let merge_pairs = merges
            .iter()
            .map(|s| {
                s.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("merge '{s}' has no space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merge_pairs)
            .build()
            .map_err(|e| tok_err(format!("building BPE: {e}")))?;
        let mut inner = Inner::new(bpe.into());
        inner.with_pre_tokenizer(Some(Pre::byte_level_splits(splits).map_err(tok_err)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| matches!(k, TokenKind::Control | TokenKind::UserDefined))
            .map(|(t, k)| AddedToken::from(t.to_string(), *k == TokenKind::Control))
            .collect();
        inner.add_special_tokens(&added);

        let map = char_to_byte();
        let token_bytes = tokens
            .iter()
            .zip(&kinds)
            .map(|(t, k)| match k {
                TokenKind::Control | TokenKind::UserDefined | TokenKind::Unused => {
                    t.as_bytes().to_vec()
                }
                _ => byte_level_bytes(t, &map),
            })
            .collect();
        let id = |key: &str| {
            m.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let mut eog: Vec<u32> = [
            eos,
            id("tokenizer.ggml.eot_token_id"),
            id("tokenizer.ggml.eom_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (i, (t, k)) in tokens.iter().zip(&kinds).enumerate() {
            if matches!(k, TokenKind::Control | TokenKind::UserDefined) && EOG_NAMES.contains(t) {
                eog.push(i as u32);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        Ok(Tokenizer {
            vocab: std::sync::Arc::new(Vocab {
                inner,
                token_bytes,
                kinds,
                merges,
            }),
            bos,
            eos,
            add_bos: m
                .get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            eog,
            chat_template: m
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
            source: format!("gguf ({pre})"),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. Special ids and the chat template come from `base`
    /// (the model's own tokenizer) when given, else from a `tokenizer_config.json` beside the file.
    pub fn from_json_file(path: &Path, base: Option<&Tokenizer>) -> Result<Tokenizer> {
        if !path.exists() {
            return Err(WeightsError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let json = read_limited(
            path,
            MAX_TOKENIZER_JSON_BYTES,
            "the size of tokenizer.json in bytes",
        )?;
        let config = match (base, path.parent()) {
            (None, Some(dir)) => {
                let p = dir.join("tokenizer_config.json");
                match p.exists() {
                    true => Some(read_limited(
                        &p,
                        MAX_TOKENIZER_JSON_BYTES,
                        "the size of tokenizer_config.json in bytes",
                    )?),
                    false => None,
                }
            }
            _ => None,
        };
        Self::from_json_bytes(&json, config.as_deref(), base, &path.display().to_string())
    }

    /// Builds a tokenizer from the bytes of a `tokenizer.json` (and of its `tokenizer_config.json`,
    /// which gives the special ids and the chat template unless `base` does). `source` names it in
    /// errors.
    pub fn from_json_bytes(
        json: &[u8],
        config: Option<&[u8]>,
        base: Option<&Tokenizer>,
        source: &str,
    ) -> Result<Tokenizer> {
        let (inner, parsed) = parse_tokenizer_json(json, source)?;
        if !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(tok_err(format!(
                "{source}: only byte-level BPE tokenizers are supported"
            )));
        }
        let (token_bytes, kinds) = json_token_table(&inner, source)?;
        let vocab = std::sync::Arc::new(Vocab {
            token_bytes,
            kinds,
            merges: json_merges(&parsed),
            inner,
        });
        let source = source.to_string();
        if let Some(b) = base {
            return Ok(Tokenizer {
                vocab,
                bos: b.bos,
                eos: b.eos,
                add_bos: b.add_bos,
                eog: b.eog.clone(),
                chat_template: b.chat_template.clone(),
                source,
            });
        }
        let cfg: serde_json::Value = config
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let inner = &vocab.inner;
        let named = |key: &str| {
            let v = cfg.get(key)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(s)
        };
        let bos = named("bos_token");
        let eos = named("eos_token");
        let mut eog: Vec<u32> = eos.into_iter().collect();
        for (id, a) in inner.get_added_tokens_decoder() {
            if EOG_NAMES.contains(&a.content.as_str()) {
                eog.push(id);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        Ok(Tokenizer {
            bos,
            eos,
            add_bos: cfg
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            eog,
            chat_template: cfg
                .get("chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            vocab,
            source,
        })
    }

    /// Token ids of `text`; special tokens written in the text are parsed as special tokens.
    /// `add_bos` prepends BOS when the tokenizer asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .vocab
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err(format!("encoding failed: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Number of token ids the tokenizer knows (the real vocabulary, without padding rows).
    pub fn n_vocab(&self) -> usize {
        self.vocab.token_bytes.len()
    }

    /// Whether `id` may ever be produced: a known token that is not marked unused.
    pub fn is_valid(&self, id: u32) -> bool {
        self.vocab
            .kinds
            .get(id as usize)
            .is_some_and(|k| *k != TokenKind::Unused)
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.vocab.kinds.get(id as usize).copied()
    }

    /// End-of-generation tokens (EOS, EOT and end-of-turn tokens).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The raw bytes of one token (for control tokens, their text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.vocab
            .token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The token's string as stored in the vocabulary.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.vocab.inner.id_to_token(id)
    }

    /// Decodes ids to text (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        self.vocab
            .inner
            .save(path, false)
            .map_err(|e| tok_err(format!("saving {}: {e}", path.display())))
    }

    pub fn merges(&self) -> &[String] {
        &self.vocab.merges
    }

    /// Whether two tokenizers share one vocabulary in memory.
    pub fn shares_vocab_with(&self, other: &Tokenizer) -> bool {
        std::sync::Arc::ptr_eq(&self.vocab, &other.vocab)
    }

    /// The first difference between two tokenizers' vocabularies, merges or special ids, if any.
    /// Vocabularies of different lengths agree when the longer one's extra entries are padding
    /// (unused tokens that can never be produced), as when one model pads its embedding further.
    pub fn first_difference(&self, other: &Tokenizer) -> Option<String> {
        let n = self.n_vocab().min(other.n_vocab());
        for i in 0..n {
            let (a, b) = (self.token_bytes(i as u32), other.token_bytes(i as u32));
            if a != b {
                return Some(format!(
                    "token {i} is {:?} in one and {:?} in the other",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b)
                ));
            }
            if self.is_valid(i as u32) != other.is_valid(i as u32) {
                return Some(format!(
                    "token {i} ({:?}) is unused in only one of them",
                    String::from_utf8_lossy(a)
                ));
            }
        }
        let longer = if self.n_vocab() > n { self } else { other };
        if let Some(i) = (n..longer.n_vocab()).find(|&i| longer.is_valid(i as u32)) {
            return Some(format!(
                "vocabulary sizes {} and {}: token {i} ({:?}) exists in only one",
                self.n_vocab(),
                other.n_vocab(),
                String::from_utf8_lossy(longer.token_bytes(i as u32))
            ));
        }
        let (ma, mb) = (self.merges(), other.merges());
        if let Some(i) = (0..ma.len().min(mb.len())).find(|&i| ma[i] != mb[i]) {
            return Some(format!(
                "merge {i} is '{}' in one and '{}' in the other",
                ma[i], mb[i]
            ));
        }
        if ma.len() != mb.len() {
            return Some(format!("{} and {} merges", ma.len(), mb.len()));
        }
        if self.bos != other.bos || self.eos != other.eos {
            return Some(format!(
                "special ids differ: bos {:?}/{:?}, eos {:?}/{:?}",
                self.bos, other.bos, self.eos, other.eos
            ));
        }
        if self.eog != other.eog {
            return Some(format!(
                "end-of-generation ids differ: {:?} and {:?}",
                self.eog, other.eog
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_to_char();
        let m = char_to_byte();
        assert_eq!(m.len(), 256);
        for b in 0..=255u8 {
            assert_eq!(m[&t[b as usize]], b);
        }
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }
}
