//! The grammar state on the fixture's byte-level vocabulary: allowed sets, consumption,
//! rollback, the end of a grammar, and the errors of a bad one.

use super::*;
use crate::fixture::{self, FixtureSpec};
use cascade_weights::{OpenOptions, Tokenizer, WeightStore};

fn tokenizer() -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    fixture::write(&FixtureSpec::default(), &path).unwrap();
    let m = crate::model::Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
    m.tokenizer.clone()
}

/// Every id the set allows, as the text it stands for.
fn allowed_texts(tok: &Tokenizer, a: &Allowed) -> Vec<String> {
    (0..tok.n_vocab() as u32)
        .filter(|&id| a.allows(id))
        .map(|id| String::from_utf8_lossy(tok.token_bytes(id)).into_owned())
        .collect()
}

fn id_of(tok: &Tokenizer, text: &str) -> u32 {
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids.len(), 1, "{text:?} is one token");
    ids[0]
}

#[test]
fn a_regex_allows_only_its_continuations_and_then_the_end() {
    let tok = tokenizer();
    let g = Grammars::new(&tok).unwrap();
    let mut c = g.start(&Grammar::Regex("(yes|no)".into())).unwrap();
    let mut first = allowed_texts(&tok, &c.allowed().unwrap());
    first.sort();
    assert_eq!(first, ["n", "y"]);
    c.consume(&[id_of(&tok, "y")]).unwrap();
    assert_eq!(allowed_texts(&tok, &c.allowed().unwrap()), ["e"]);
    c.consume(&[id_of(&tok, "e"), id_of(&tok, "s")]).unwrap();
    // Complete: only the end of generation may follow.
    let end = c.allowed().unwrap();
    let ends: Vec<u32> = (0..tok.n_vocab() as u32)
        .filter(|&i| end.allows(i))
        .collect();
    assert!(!ends.is_empty());
    assert!(ends.iter().all(|&i| tok.is_eog(i)), "{ends:?}");
    // Rolled back two tokens, the grammar is after "y" again.
    c.rollback(2).unwrap();
    assert_eq!(allowed_texts(&tok, &c.allowed().unwrap()), ["e"]);
}

#[test]
fn a_mask_is_the_model_valid_ids_the_grammar_allows() {
    let tok = tokenizer();
    let g = Grammars::new(&tok).unwrap();
    let mut c = g.start(&Grammar::Regex("[ab]".into())).unwrap();
    let (a, b) = (id_of(&tok, "a") as usize, id_of(&tok, "b") as usize);
    let mut valid = vec![true; tok.n_vocab() + 8];
    valid[b] = false;
    let mask = c.mask(&valid).unwrap();
    assert_eq!(mask.len(), valid.len());
    let on: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
    assert_eq!(on, [a]);
}

#[test]
fn json_schema_output_is_bounded_and_parses() {
    let tok = tokenizer();
    let g = Grammars::new(&tok).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": false
    });
    let mut c = g.start(&Grammar::JsonSchema(schema)).unwrap();
    // Pretty-printed JSON within the whitespace bound is accepted token by token.
    let text = "{\n  \"ok\": true\n}";
    let ids = tok.encode(text, false).unwrap();
    for &id in &ids {
        assert!(c.allowed().unwrap().allows(id), "{text:?} at {id}");
        c.consume(&[id]).unwrap();
    }
    let end = c.allowed().unwrap();
    assert!((0..tok.n_vocab() as u32).any(|i| end.allows(i) && tok.is_eog(i)));
    // Whitespace runs are bounded: a long one is refused before its end.
    let mut c = g.start(&Grammar::JsonObject).unwrap();
    c.consume(&[id_of(&tok, "{")]).unwrap();
    let space = id_of(&tok, " ");
    let mut taken = 0;
    while taken < 100 && c.allowed().unwrap().allows(space) {
        c.consume(&[space]).unwrap();
        taken += 1;
    }
    assert!(taken < 100, "an unbounded whitespace run");
}

#[test]
fn bad_grammars_are_errors() {
    let tok = tokenizer();
    let g = Grammars::new(&tok).unwrap();
    for bad in [
        Grammar::Lark("start: foo".into()),
        Grammar::Regex("(".into()),
        Grammar::JsonSchema(serde_json::json!({"type": "no such type"})),
    ] {
        let e = g.start(&bad).unwrap_err();
        assert!(matches!(e, EngineError::Grammar { .. }), "{bad:?}: {e}");
    }
}

/// A grammar's compilation time grows faster than its size: past the cap it is refused before
/// compiling (a 6 MB alternation took minutes), under it a large one compiles.
#[test]
fn oversized_grammars_are_refused_before_compiling() {
    let tok = tokenizer();
    let g = Grammars::new(&tok).unwrap();
    let words = |n: usize| {
        (0..n)
            .map(|i| format!("\"w{i}\""))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let huge = format!("start: {}", words(600_000));
    assert!(huge.len() > MAX_GRAMMAR_BYTES);
    let e = g.start(&Grammar::Lark(huge)).unwrap_err();
    assert!(e.to_string().contains("KiB"), "{e}");
    let schema =
        serde_json::json!({"enum": (0..100_000).map(|i| format!("v{i}")).collect::<Vec<_>>()});
    assert!(g.start(&Grammar::JsonSchema(schema)).is_err());
    let large = format!("start: {}", words(10_000));
    assert!(large.len() < MAX_GRAMMAR_BYTES);
    g.start(&Grammar::Lark(large)).unwrap();
}

/// Deep nesting is llguidance's error, not a stack overflow; errors stay short even when the
/// grammar they quote is long.
#[test]
fn deep_nesting_is_an_error() {
    let tok = tokenizer();
    let g = Grammars::new(&tok).unwrap();
    let n = 20_000;
    let lark = format!("start: {}\"a\"{}", "(".repeat(n), ")".repeat(n));
    let regex = format!("{}a{}", "(".repeat(n), ")".repeat(n));
    for bad in [Grammar::Lark(lark), Grammar::Regex(regex)] {
        let e = g.start(&bad).unwrap_err().to_string();
        assert!(e.len() <= MAX_ERROR_CHARS + 64, "{} chars", e.len());
    }
    let mut schema = serde_json::json!({"type": "string"});
    for _ in 0..100 {
        schema = serde_json::json!({"type": "array", "items": schema});
    }
    g.start(&Grammar::JsonSchema(schema)).unwrap();
}
