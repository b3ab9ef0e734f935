//! A cheaper draft step (FR-Spec): the draft's output layer computes only the most frequent
//! tokens of the vocabulary. The ranking is counted offline by the project's own tokenizer over
//! text every machine has (Python's standard library, its documentation, the prompt sets) and
//! stored per tokenizer as a small file: magic, version, the tokenizer's fingerprint, then token
//! ids from the most frequent down. Exactness is untouched: the target verifies every token, and a
//! token outside the subset is one the draft gives probability 0.

use std::io::Write;
use std::path::Path;

use cascade_weights::Tokenizer;

use crate::error::{EngineError, Result};

const MAGIC: &[u8; 4] = b"CVRK";
const VERSION: u32 = 1;

/// Token ids of one tokenizer ranked by frequency, most frequent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabRank {
    pub fingerprint: u64,
    pub ids: Vec<u32>,
}

/// FNV-1a over the valid tokens (each one's id and bytes; padding rows are left out): two
/// tokenizers with the same fingerprint number their tokens alike.
pub fn fingerprint(tok: &Tokenizer) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for id in (0..tok.n_vocab() as u32).filter(|&i| tok.is_valid(i)) {
        let t = tok.token_bytes(id);
        for b in id
            .to_le_bytes()
            .into_iter()
            .chain((t.len() as u32).to_le_bytes())
        {
            eat(b);
        }
        t.iter().for_each(|&b| eat(b));
    }
    h
}

impl VocabRank {
    /// Counts the tokens of `texts` and ranks every valid id (ties and unseen ids by id).
    pub fn count<'a>(tok: &Tokenizer, texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut counts = vec![0u64; tok.n_vocab()];
        for t in texts {
            for id in tok.encode(t, false)? {
                counts[id as usize] += 1;
            }
        }
        let mut ids: Vec<u32> = (0..tok.n_vocab() as u32)
            .filter(|&i| tok.is_valid(i))
            .collect();
        ids.sort_by_key(|&i| (std::cmp::Reverse(counts[i as usize]), i));
        Ok(VocabRank {
            fingerprint: fingerprint(tok),
            ids,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 4 * self.ids.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for id in &self.ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let bad = |reason: &str| EngineError::InvalidParam {
            name: "vocabulary ranking",
            reason: reason.to_string(),
        };
        if b.len() < 20 || &b[..4] != MAGIC {
            return Err(bad("not a ranking file (magic CVRK)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(4) != VERSION {
            return Err(bad(&format!(
                "version {} (this build reads {VERSION})",
                u32_at(4)
            )));
        }
        let fingerprint = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let n = u32_at(16) as usize;
        if b.len() != 20 + 4 * n {
            return Err(bad(&format!("{} bytes for {n} ids", b.len())));
        }
        let ids = (0..n).map(|i| u32_at(20 + 4 * i)).collect();
        Ok(VocabRank { fingerprint, ids })
    }

    /// Writes the file atomically (a temporary name, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&self.to_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let b =
            std::fs::read(path).map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&b)
    }

    /// The rankings this build ships, for the tokenizer whose fingerprint is `fp`.
    pub fn shipped(fp: u64) -> Option<Self> {
        SHIPPED
            .iter()
            .filter_map(|b| Self::from_bytes(b).ok())
            .find(|r| r.fingerprint == fp)
    }

    /// The `n` most frequent ids, with every end-of-generation id of `tok` among them (the draft
    /// must be able to propose the end), sorted by id.
    pub fn subset(&self, tok: &Tokenizer, n: usize) -> Result<Vec<u32>> {
        if self.fingerprint != fingerprint(tok) {
            return Err(EngineError::InvalidParam {
                name: "vocabulary ranking",
                reason: "made for another tokenizer".into(),
            });
        }
        let mut ids: Vec<u32> = self.ids.iter().copied().take(n).collect();
        for &e in tok.eog_ids() {
            if !ids.contains(&e) {
                ids.push(e);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// Rankings built with `cascade vocab-rank` (see `data/vocab/README.md`).
const SHIPPED: &[&[u8]] = &[include_bytes!("../../../data/vocab/qwen2.5.rank")];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{self, FixtureSpec};
    use cascade_weights::{OpenOptions, WeightStore};

    fn tokenizer() -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        fixture::write(&FixtureSpec::default(), &p).unwrap();
        let files = WeightStore::new()
            .open_model(&p, &OpenOptions::default())
            .unwrap();
        files.tokenizer.clone()
    }

    #[test]
    fn ranks_by_count_round_trip_and_keep_the_end_tokens() {
        let tok = tokenizer();
        // Sixteen 'a's (no merge joins them), three 'b's, the rest once.
        let r = VocabRank::count(&tok, ["aaaaaaaa bcd", "aaaaaaaa bb"]).unwrap();
        let a = tok.encode("a", false).unwrap();
        let b = tok.encode("b", false).unwrap();
        assert_eq!(r.ids[0], a[0], "the most frequent token first");
        assert_eq!(r.ids[1], b[0], "then the next");
        assert_eq!(VocabRank::from_bytes(&r.to_bytes()).unwrap(), r);
        let sub = r.subset(&tok, 3).unwrap();
        assert!(tok.eog_ids().iter().all(|e| sub.contains(e)));
        assert!(sub.contains(&r.ids[0]) && sub.windows(2).all(|w| w[0] < w[1]));
        let mut other = r.clone();
        other.fingerprint ^= 1;
        assert!(other.subset(&tok, 3).is_err());
        assert!(VocabRank::from_bytes(&r.to_bytes()[..30]).is_err());
        assert!(VocabRank::from_bytes(b"nope").is_err());
    }
}
