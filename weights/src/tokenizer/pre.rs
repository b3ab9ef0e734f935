//! The pre-tokenizer: the split rules that cut text into words before byte-level BPE.
//!
//! `tokenizers`' own `Split` compiles its regex each time one is built, deserialized or cloned,
//! and compiling a Unicode-class pattern costs far more than loading a small vocabulary. Here
//! each distinct pattern is compiled once per process ([`compiled`]) and shared, so loading a
//! tokenizer again (a second model of the family, a fuzz input) compiles nothing. Shapes this
//! module does not run itself (an inverted split, a literal-string split, any other kind) are
//! left to the library's own type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::utils::SysRegex;
use tokenizers::{PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior};

/// Most distinct patterns kept compiled; past it the cache starts over. Real tokenizers name a
/// handful; a hostile stream of inputs can name any number, and must not grow memory.
const MAX_CACHED: usize = 64;

/// The compiled regex for `pattern`, compiled on first use in this process.
fn compiled(pattern: &str) -> Result<Arc<SysRegex>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<SysRegex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let hit = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(pattern)
        .cloned();
    if let Some(regex) = hit {
        return Ok(regex);
    }
    // Compiled outside the lock: a slow pattern must not hold up other loads.
    let regex = Arc::new(SysRegex::new(pattern).map_err(|e| format!("bad split regex: {e}"))?);
    let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= MAX_CACHED {
        map.clear();
    }
    map.insert(pattern.to_string(), Arc::clone(&regex));
    Ok(regex)
}

/// One step of a shared pre-tokenizer.
#[derive(Debug)]
pub(crate) enum Step {
    /// Cuts each piece at the regex's matches.
    Split {
        regex: Arc<SysRegex>,
        behavior: SplitDelimiterBehavior,
    },
    ByteLevel(ByteLevel),
}

/// A pre-tokenizer: steps run here with shared regexes, or the library's own type.
#[derive(Debug)]
pub(crate) enum Pre {
    Shared {
        steps: Vec<Step>,
        /// Its `tokenizer.json` form, written back by `Tokenizer::save_json`.
        description: Value,
    },
    Library(PreTokenizerWrapper),
}

impl Pre {
    /// Splits at each regex in turn (matches isolated), then maps bytes to byte-level chars: the
    /// pre-tokenizers llama.cpp uses for GGUF "gpt2" vocabularies.
    pub(crate) fn byte_level_splits(patterns: &[&str]) -> Result<Pre, String> {
        let mut items: Vec<Value> = patterns
            .iter()
            .map(|p| {
                json!({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false})
            })
            .collect();
        items.push(json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
        }));
        Pre::from_value(json!({"type": "Sequence", "pretokenizers": items}))
    }

    /// From the `pre_tokenizer` value of a `tokenizer.json`.
    fn from_value(v: Value) -> Result<Pre, String> {
        let mut steps = Vec::new();
        if shared_steps(&v, &mut steps)? {
            return Ok(Pre::Shared {
                steps,
                description: v,
            });
        }
        PreTokenizerWrapper::deserialize(&v)
            .map(Pre::Library)
            .map_err(|e| e.to_string())
    }
}

/// Appends the steps `v` describes; false where it holds a kind left to the library.
fn shared_steps(v: &Value, steps: &mut Vec<Step>) -> Result<bool, String> {
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            let Some(items) = v.get("pretokenizers").and_then(Value::as_array) else {
                return Ok(false);
            };
            for item in items {
                if !shared_steps(item, steps)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Some("Split") => {
            let pattern = v.pointer("/pattern/Regex").and_then(Value::as_str);
            let invert = v.get("invert").and_then(Value::as_bool);
            let behavior = v
                .get("behavior")
                .and_then(|b| SplitDelimiterBehavior::deserialize(b).ok());
            let (Some(pattern), Some(false), Some(behavior)) = (pattern, invert, behavior) else {
                return Ok(false);
            };
            let regex = compiled(pattern)?;
            steps.push(Step::Split { regex, behavior });
            Ok(true)
        }
        Some("ByteLevel") => match ByteLevel::deserialize(v) {
            Ok(b) => {
                steps.push(Step::ByteLevel(b));
                Ok(true)
            }
            Err(_) => Ok(false),
        },
        _ => Ok(false),
    }
}

impl PreTokenizer for Pre {
    fn pre_tokenize(&self, text: &mut PreTokenizedString) -> tokenizers::Result<()> {
        match self {
            Pre::Library(w) => w.pre_tokenize(text),
            Pre::Shared { steps, .. } => steps.iter().try_for_each(|step| match step {
                Step::Split { regex, behavior } => {
                    text.split(|_, piece| piece.split(&**regex, *behavior))
                }
                Step::ByteLevel(b) => b.pre_tokenize(text),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Pre {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pre, D::Error> {
        Pre::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Pre {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pre::Shared { description, .. } => description.serialize(s),
            Pre::Library(w) => w.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::Split;
    use tokenizers::OffsetReferential;
    use tokenizers::OffsetType;

    fn pieces(pre: &dyn PreTokenizer, text: &str) -> Vec<String> {
        let mut s = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut s).expect("pre-tokenize");
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    /// The shared steps cut text exactly as the library's own `Split` + `ByteLevel` sequence.
    #[test]
    fn shared_splits_equal_the_library() {
        let pattern = r"'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
        let ours = Pre::byte_level_splits(&[r"\p{N}", pattern]).expect("compiles");
        assert!(matches!(ours, Pre::Shared { .. }));
        let split = |p: &str| -> PreTokenizerWrapper {
            Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex(p.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .expect("compiles")
            .into()
        };
        let library = Sequence::new(vec![
            split(r"\p{N}"),
            split(pattern),
            ByteLevel::new(false, false, false).into(),
        ]);
        for text in [
            "Hello, world! it's 12345  x\n\n\ty",
            "é漢字 🙂 don't",
            "",
            "   ",
        ] {
            assert_eq!(pieces(&ours, text), pieces(&library, text), "{text:?}");
        }
    }

    #[test]
    fn a_pattern_is_compiled_once() {
        let a = compiled(r"\p{L}+ once").expect("compiles");
        let b = compiled(r"\p{L}+ once").expect("compiles");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(compiled(r"(unclosed").is_err());
    }

    /// What the library runs itself, and what it rejects, stays its business.
    #[test]
    fn other_shapes_go_to_the_library() {
        let inverted = json!({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Isolated", "invert": true});
        assert!(matches!(Pre::from_value(inverted), Ok(Pre::Library(_))));
        let digits = json!({"type": "Digits", "individual_digits": true});
        assert!(matches!(Pre::from_value(digits), Ok(Pre::Library(_))));
        assert!(Pre::from_value(json!({"type": "Nonsense"})).is_err());
        let bad = json!({"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated", "invert": false});
        assert!(Pre::from_value(bad).is_err());
    }
}
