//! The vocabulary as llguidance sees it: each id's bytes in a trie (control tokens behind
//! llguidance's special-token marker, so grammar text never matches them), and a tokenizer for
//! the strings a grammar forces.

use std::sync::Arc;

use cascade_weights::{TokenKind, Tokenizer};
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{EngineError, Result};

struct Env {
    trie: TokTrie,
    tok: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tok
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The llguidance environment of `tok`; end of generation is any of its end-of-generation ids.
pub(super) fn tok_env(tok: &Tokenizer) -> Result<TokEnv> {
    let n = tok.n_vocab();
    let eog = tok.eog_ids().to_vec();
    let Some(&first) = eog.first() else {
        return Err(EngineError::Grammar {
            reason: "the tokenizer has no end-of-generation token to end a grammar with".into(),
        });
    };
    let words: Vec<Vec<u8>> = (0..n as u32)
        .map(|id| match tok.kind(id) {
            Some(TokenKind::Control | TokenKind::UserDefined) => {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(tok.token_bytes(id));
                w
            }
            Some(TokenKind::Unused) | None => Vec::new(),
            _ => tok.token_bytes(id).to_vec(),
        })
        .collect();
    let info = TokRxInfo::new(n as u32, first);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
    Ok(Arc::new(Env {
        trie,
        tok: tok.clone(),
    }))
}
