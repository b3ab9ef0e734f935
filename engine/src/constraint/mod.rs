//! Constrained decoding: a grammar (a JSON schema, a Lark grammar, a regular expression) decides
//! which tokens may come next. [llguidance] computes each position's allowed set from the
//! tokens so far; the scheduler applies the same set to the draft's proposal and to the target's
//! verification of it, so exact speculation stays lossless under a grammar: greedy constrained
//! output with a draft is token for token the constrained target's own.
//!
//! A grammar is compiled when the request is submitted, on the caller's thread (an invalid or
//! too large one is an error there, before the scheduler sees it); the per-engine tables
//! ([`Grammars`]) are built on the first constrained request.

mod env;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{EngineError, Result};

/// What a constrained request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid under this schema (`response_format: {"type": "json_schema"}`).
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect (which also reads GBNF-style repetition).
    Lark(String),
    /// Text matching a regular expression.
    Regex(String),
}

/// Whitespace a JSON grammar allows between two tokens of the JSON: a line break and an
/// indent at most, not llguidance's default unbounded run (on which a model can loop until
/// `max_tokens`). A schema's own `x-guidance` options take precedence.
const JSON_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,24}";

fn json_grammar(schema: &Value) -> TopLevelGrammar {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_pattern": JSON_WHITESPACE}));
    }
    TopLevelGrammar::from_json_schema(schema)
}

/// The largest grammar source compiled: a Lark grammar or regex, or a schema written as JSON.
/// Compilation time grows faster than a grammar's size, so a larger one is refused before it
/// starts (real schemas and grammars are a few KiB; large generated ones a few dozen).
pub const MAX_GRAMMAR_BYTES: usize = 256 << 10;

impl Grammar {
    /// The size of its source in bytes.
    fn source_len(&self) -> usize {
        match self {
            Grammar::JsonObject => 0,
            Grammar::JsonSchema(s) => s.to_string().len(),
            Grammar::Lark(g) | Grammar::Regex(g) => g.len(),
        }
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonObject => json_grammar(&serde_json::json!({"type": "object"})),
            Grammar::JsonSchema(s) => json_grammar(s),
            Grammar::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
        }
    }
}

/// Longest error reason kept: llguidance's errors quote the grammar, which may be long.
const MAX_ERROR_CHARS: usize = 500;

fn grammar_err(reason: impl std::fmt::Display) -> EngineError {
    let mut reason = reason.to_string();
    if let Some((cut, _)) = reason.char_indices().nth(MAX_ERROR_CHARS) {
        reason.truncate(cut);
        reason.push_str("...");
    }
    EngineError::Grammar { reason }
}

/// The tables grammars are compiled against: the vocabulary's byte trie and llguidance's
/// precomputed token slices. One per engine, shared by its requests.
pub(crate) struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Builds the tables for `tok` (the target's tokenizer; the draft shares it).
    pub fn new(tok: &cascade_weights::Tokenizer) -> Result<Grammars> {
        let env = env::tok_env(tok)?;
        let mut factory = ParserFactory::new_simple(&env).map_err(grammar_err)?;
        factory.quiet();
        *factory.limits_mut() = limits();
        Ok(Grammars { factory })
    }

    /// Compiles `g` into a constraint at the start of a generation.
    pub fn start(&self, g: &Grammar) -> Result<Constraint> {
        let n = g.source_len();
        if n > MAX_GRAMMAR_BYTES {
            return Err(grammar_err(format!(
                "the grammar is {} KiB, more than the {} KiB supported",
                n.div_ceil(1024),
                MAX_GRAMMAR_BYTES >> 10
            )));
        }
        let parser = self.factory.create_parser(g.top_level());
        let matcher = Matcher::new(parser);
        if let Some(e) = matcher.get_error() {
            return Err(grammar_err(e));
        }
        Ok(Constraint { matcher })
    }
}

/// llguidance's limits (its defaults bound a grammar's size, lexer states and the work of one
/// mask): a pathological grammar is refused when compiled, or fails its request at the step
/// that would exceed them, instead of holding the scheduler thread. Errors name the reason
/// without echoing the parser's state and the whole grammar back to a client.
fn limits() -> ParserLimits {
    ParserLimits {
        verbose_errors: false,
        ..ParserLimits::default()
    }
}

/// The allowed set of one position: llguidance's bit set over the tokenizer's ids.
#[derive(Debug, Clone)]
pub(crate) struct Allowed(SimpleVob);

impl Allowed {
    /// `valid` (one flag per logit row) with every id the grammar forbids cleared.
    pub fn and(&self, valid: &[bool]) -> Vec<bool> {
        let mut out = vec![false; valid.len()];
        self.0.iter_set_entries(|id| {
            if let (Some(o), Some(&v)) = (out.get_mut(id), valid.get(id)) {
                *o = v;
            }
        });
        out
    }

    pub fn allows(&self, id: u32) -> bool {
        self.0.is_allowed(id)
    }
}

/// One generation's grammar state: the tokens it has consumed so far.
pub(crate) struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

impl Constraint {
    /// The ids allowed next: the grammar's set, or only the end-of-generation ids once it is
    /// complete.
    pub fn allowed(&mut self) -> Result<Allowed> {
        self.matcher
            .compute_mask_or_eos()
            .map(Allowed)
            .map_err(grammar_err)
    }

    /// `valid` with the ids the grammar forbids next cleared.
    #[cfg(test)]
    pub fn mask(&mut self, valid: &[bool]) -> Result<Vec<bool>> {
        Ok(self.allowed()?.and(valid))
    }

    /// Advances past `tokens`, each of which the grammar allowed.
    pub fn consume(&mut self, tokens: &[u32]) -> Result<()> {
        self.matcher.consume_tokens(tokens).map_err(grammar_err)
    }

    /// Takes back the last `n` consumed tokens (rejected drafts).
    pub fn rollback(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.matcher.rollback(n).map_err(grammar_err)
    }
}

#[cfg(test)]
mod tests;
