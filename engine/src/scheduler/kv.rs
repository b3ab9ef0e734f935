//! The paged KV pool of one model: fixed-size blocks in one [`KvStorage`], reference counted, with
//! full blocks of earlier sequences kept (least recently used first out) so that a later prompt
//! with the same prefix reuses them instead of computing them again.

use std::collections::{BTreeMap, HashMap};

use crate::kv_cache::KvStorage;

/// A sequence's blocks in one pool, and how many positions they hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqBlocks {
    pub table: Vec<u32>,
    pub len: usize,
}

/// What a full block holds: the chain hash of every token up to its end, and its own tokens
/// (compared on a hit, so a hash collision can never serve the wrong keys).
#[derive(Debug, Clone)]
struct Cached {
    hash: u64,
    tokens: Vec<u32>,
}

pub(crate) struct BlockPool {
    pub storage: KvStorage,
    refs: Vec<u32>,
    /// Blocks with no reference and nothing worth keeping.
    free: Vec<u32>,
    /// Blocks with no reference that hold a cached prefix, by the tick they were released at.
    idle: BTreeMap<u64, u32>,
    idle_tick: Vec<u64>,
    tick: u64,
    cached: Vec<Option<Cached>>,
    by_hash: HashMap<u64, u32>,
    prefix_cache: bool,
}

/// The chain hash of a block: its parent's hash and its tokens (FNV-1a over the ids).
fn chain(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = parent ^ 0xcbf2_9ce4_8422_2325;
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl BlockPool {
    pub fn new(storage: KvStorage, prefix_cache: bool) -> BlockPool {
        let n = storage.n_blocks();
        BlockPool {
            storage,
            refs: vec![0; n],
            free: (0..n as u32).rev().collect(),
            idle: BTreeMap::new(),
            idle_tick: vec![0; n],
            tick: 0,
            cached: vec![None; n],
            by_hash: HashMap::new(),
            prefix_cache,
        }
    }

    pub fn block(&self) -> usize {
        self.storage.block()
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free, or idle with a cached prefix to evict).
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Idle blocks holding a cached prefix.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    /// Blocks referenced by sequences.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Blocks a sequence of `positions` positions needs.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block())
    }

    /// The longest run of cached full blocks that starts `tokens` (leaving at least one token to
    /// compute), referenced for the caller.
    pub fn lookup(&mut self, tokens: &[u32]) -> SeqBlocks {
        let mut out = SeqBlocks::default();
        if !self.prefix_cache || tokens.is_empty() {
            return out;
        }
        let b = self.block();
        let mut parent = 0u64;
        for chunk in tokens[..tokens.len() - 1].chunks_exact(b) {
            let h = chain(parent, chunk);
            let Some(&id) = self.by_hash.get(&h) else {
                break;
            };
            match &self.cached[id as usize] {
                Some(c) if c.hash == h && c.tokens == chunk => {}
                _ => break,
            }
            self.take_ref(id);
            out.table.push(id);
            out.len += b;
            parent = h;
        }
        out
    }

    fn take_ref(&mut self, id: u32) {
        if self.refs[id as usize] == 0 {
            self.idle.remove(&self.idle_tick[id as usize]);
        }
        self.refs[id as usize] += 1;
    }

    /// Grows `seq` to `n_blocks` blocks; false (and nothing taken) when they are not available.
    pub fn grow(&mut self, seq: &mut SeqBlocks, n_blocks: usize) -> bool {
        let need = n_blocks.saturating_sub(seq.table.len());
        if need > self.available() {
            return false;
        }
        for _ in 0..need {
            let id = match self.free.pop() {
                Some(id) => id,
                None => self.evict_oldest(),
            };
            self.refs[id as usize] = 1;
            seq.table.push(id);
        }
        true
    }

    /// Takes the least recently released cached block and forgets its prefix.
    fn evict_oldest(&mut self) -> u32 {
        let (_, id) = self
            .idle
            .pop_first()
            .expect("available() counted an idle block");
        if let Some(c) = self.cached[id as usize].take() {
            if self.by_hash.get(&c.hash) == Some(&id) {
                self.by_hash.remove(&c.hash);
            }
        }
        id
    }

    /// Records the full blocks of `seq` that hold `tokens` (the tokens at its first positions,
    /// all computed) as reusable prefixes.
    pub fn register(&mut self, seq: &SeqBlocks, tokens: &[u32]) {
        if !self.prefix_cache {
            return;
        }
        let b = self.block();
        let full = tokens.len().min(seq.len) / b;
        let mut parent = 0u64;
        for (i, chunk) in tokens.chunks_exact(b).take(full).enumerate() {
            let h = chain(parent, chunk);
            parent = h;
            let id = seq.table[i];
            if self.cached[id as usize].is_some() || self.by_hash.contains_key(&h) {
                continue;
            }
            self.cached[id as usize] = Some(Cached {
                hash: h,
                tokens: chunk.to_vec(),
            });
            self.by_hash.insert(h, id);
        }
    }

    /// Drops `seq`'s references; blocks nobody else holds become free (or idle, when they hold a
    /// cached prefix).
    pub fn release(&mut self, seq: &mut SeqBlocks) {
        for id in seq.table.drain(..) {
            let r = &mut self.refs[id as usize];
            *r -= 1;
            if *r == 0 {
                if self.cached[id as usize].is_some() {
                    self.tick += 1;
                    self.idle_tick[id as usize] = self.tick;
                    self.idle.insert(self.tick, id);
                } else {
                    self.free.push(id);
                }
            }
        }
        seq.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> BlockPool {
        BlockPool::new(KvStorage::new(1, 2, 8, n), true)
    }

    #[test]
    fn blocks_are_counted_taken_and_given_back() {
        let mut p = pool(4);
        let mut a = SeqBlocks::default();
        assert!(p.grow(&mut a, 3));
        assert_eq!((p.used(), p.available()), (3, 1));
        let mut b = SeqBlocks::default();
        assert!(!p.grow(&mut b, 2), "only one block is left");
        assert!(b.table.is_empty());
        p.release(&mut a);
        assert_eq!((p.used(), p.available()), (0, 4));
        assert!(p.grow(&mut b, 4));
    }

    #[test]
    fn a_shared_prefix_is_found_block_by_block_and_evicted_last_used_first() {
        let mut p = pool(6);
        let prompt: Vec<u32> = (0..20).collect();
        let mut a = SeqBlocks::default();
        assert!(p.grow(&mut a, 3));
        a.len = 20;
        p.register(&a, &prompt);
        let first = a.table.clone();
        p.release(&mut a);
        assert_eq!(p.idle(), 2, "two full blocks cached");
        // Same first 16 tokens, then different: both full blocks reused.
        let mut other = prompt.clone();
        other[18] = 99;
        let hit = p.lookup(&other);
        assert_eq!((hit.len, &hit.table[..]), (16, &first[..2]));
        assert_eq!(p.idle(), 0);
        // A prompt differing in its first block finds nothing.
        let mut third = prompt.clone();
        third[3] = 7;
        assert_eq!(p.lookup(&third).len, 0);
        // A prompt of exactly 16 tokens keeps its last token to compute: one block only.
        assert_eq!(p.lookup(&prompt[..16]).len, 8);
        // Demand for every block evicts the cached ones and forgets them.
        let mut h = hit;
        p.release(&mut h);
        let mut b = SeqBlocks::default();
        let mut c = SeqBlocks::default();
        p.release(&mut SeqBlocks {
            table: vec![first[0]],
            len: 8,
        });
        assert!(p.grow(&mut b, 6));
        assert_eq!(p.lookup(&prompt).len, 0);
        assert!(!p.grow(&mut c, 1));
    }
}
