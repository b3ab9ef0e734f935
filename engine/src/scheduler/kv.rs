//! The paged KV pool of one model: fixed-size blocks in one [`KvStorage`], reference counted, with
//! the blocks of earlier sequences kept (least recently used first out) so that a later prompt
//! with the same prefix reuses them instead of computing them again: whole blocks are shared by
//! reference, and where the shared prefix ends inside a block, the positions it shares are copied
//! into a fresh block of the new sequence (so a prefix is reused to the token, as llama.cpp's
//! `cache_prompt` and SGLang's radix cache do, not only to the block as vLLM's).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher, RandomState};

use crate::kv_cache::KvStorage;

/// A sequence's blocks in one pool, and how many positions they hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqBlocks {
    pub table: Vec<u32>,
    pub len: usize,
}

/// What a cached block holds: the chain hash of every token before it and up to its end, and its
/// own tokens (compared on a hit). A full block (`tokens.len()` = the block length) is shared by
/// reference; a partial one (a sequence's last block) is only ever copied from.
#[derive(Debug, Clone)]
struct Cached {
    parent: u64,
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
    /// Full cached blocks by chain hash.
    by_hash: HashMap<u64, u32>,
    /// Cached blocks (full or partial) by their parent's chain hash: the candidates to copy from
    /// where a prompt's shared prefix ends inside a block.
    children: HashMap<u64, Vec<u32>>,
    /// The keys of [`chain`].
    keys: RandomState,
    prefix_cache: bool,
    /// Only prompt positions may be registered: the model computes a prompt's rows with other
    /// kernels than generated ones (`Model::prompt_kernels_differ`), so a generated position's
    /// keys and values are not what a later prompt holding the same token would compute.
    prompt_only: bool,
}

/// The chain hash of a block: its parent's hash and its tokens, under SipHash with keys drawn per
/// pool (`keys`), so that no one can craft prompts whose chains collide with another's (a block's
/// own tokens are compared on a hit, its predecessors only through the chain).
fn chain(keys: &RandomState, parent: u64, tokens: &[u32]) -> u64 {
    let mut h = keys.build_hasher();
    h.write_u64(parent);
    for &t in tokens {
        h.write_u32(t);
    }
    h.finish()
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
            children: HashMap::new(),
            keys: RandomState::new(),
            prefix_cache,
            prompt_only: false,
        }
    }

    /// Registers only prompt positions from now on (see the field).
    pub fn register_prompts_only(mut self) -> BlockPool {
        self.prompt_only = true;
        self
    }

    /// Of a sequence's first `computed` positions, those that may be registered when its prompt
    /// is `prompt` long.
    pub fn cacheable(&self, computed: usize, prompt: usize) -> usize {
        if self.prompt_only {
            computed.min(prompt)
        } else {
            computed
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

    /// The longest cached prefix of `tokens` (leaving at least one token to compute), referenced
    /// for the caller: whole blocks shared, then the positions a cached block shares with the
    /// rest copied into a fresh block (when one is available).
    pub fn lookup(&mut self, tokens: &[u32]) -> SeqBlocks {
        let mut out = SeqBlocks::default();
        if !self.prefix_cache || tokens.is_empty() {
            return out;
        }
        let b = self.block();
        let mut parent = 0u64;
        for chunk in tokens[..tokens.len() - 1].chunks_exact(b) {
            let h = chain(&self.keys, parent, chunk);
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
        let rest = &tokens[out.len..tokens.len() - 1];
        self.copy_partial(&mut out, parent, &rest[..rest.len().min(b)]);
        out
    }

    /// Where a cached block after `parent` starts with some of `rest` (less than a block), copies
    /// those positions into a new block at the end of `out` (a copy that fails, on a device, is
    /// logged and the positions are left to compute).
    fn copy_partial(&mut self, out: &mut SeqBlocks, parent: u64, rest: &[u32]) {
        if rest.is_empty() || self.available() == 0 {
            return;
        }
        let shared = |c: &Option<Cached>| match c {
            Some(c) => c
                .tokens
                .iter()
                .zip(rest)
                .take_while(|(a, b)| a == b)
                .count(),
            None => 0,
        };
        let best = self.children.get(&parent).and_then(|ids| {
            ids.iter()
                .map(|&id| (shared(&self.cached[id as usize]), id))
                .max()
        });
        let Some((n, src)) = best.filter(|&(n, _)| n > 0) else {
            return;
        };
        // Held while a block is taken, so that the eviction cannot pick it.
        self.take_ref(src);
        if self.available() > 0 {
            let dst = self.take_block();
            match self.storage.copy_positions(src, dst, n) {
                Ok(()) => {
                    out.table.push(dst);
                    out.len += n;
                }
                Err(e) => {
                    tracing::warn!("prefix cache: copying {n} cached positions failed: {e}");
                    self.drop_ref(dst);
                }
            }
        }
        self.drop_ref(src);
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
            let id = self.take_block();
            seq.table.push(id);
        }
        true
    }

    /// A free block, or the least recently released cached one (its prefix forgotten), with one
    /// reference. The caller has checked `available() > 0`.
    fn take_block(&mut self) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => self.evict_oldest(),
        };
        self.refs[id as usize] = 1;
        id
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
            if let Some(ids) = self.children.get_mut(&c.parent) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.children.remove(&c.parent);
                }
            }
        }
        id
    }

    /// Records the blocks of `seq` that hold `tokens` (the tokens at its first positions, all
    /// computed) as reusable prefixes: its full blocks, and its last, partial one.
    pub fn register(&mut self, seq: &SeqBlocks, tokens: &[u32]) {
        if !self.prefix_cache {
            return;
        }
        let b = self.block();
        let computed = &tokens[..tokens.len().min(seq.len)];
        let mut parent = 0u64;
        for (chunk, &id) in computed.chunks(b).zip(&seq.table) {
            let h = chain(&self.keys, parent, chunk);
            let full = chunk.len() == b;
            let taken = full && self.by_hash.contains_key(&h);
            let entry = &mut self.cached[id as usize];
            match entry {
                None if !taken => {
                    *entry = Some(Cached {
                        parent,
                        hash: h,
                        tokens: chunk.to_vec(),
                    });
                    self.children.entry(parent).or_default().push(id);
                    if full {
                        self.by_hash.insert(h, id);
                    }
                }
                // A partial block registered when its prompt was computed, which the sequence
                // has filled further since.
                Some(c)
                    if c.parent == parent
                        && c.tokens.len() < chunk.len()
                        && chunk.starts_with(&c.tokens)
                        && !taken =>
                {
                    c.hash = h;
                    c.tokens = chunk.to_vec();
                    if full {
                        self.by_hash.insert(h, id);
                    }
                }
                _ => {}
            }
            parent = h;
        }
    }

    /// Drops `seq`'s references; blocks nobody else holds become free (or idle, when they hold a
    /// cached prefix).
    pub fn release(&mut self, seq: &mut SeqBlocks) {
        let table = std::mem::take(&mut seq.table);
        for id in table {
            self.drop_ref(id);
        }
        seq.len = 0;
    }

    fn drop_ref(&mut self, id: u32) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> BlockPool {
        BlockPool::new(KvStorage::new(1, 2, 8, n).unwrap(), true)
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

    /// Writes keys `[p, p + 0.5]` and values `[-p, -p - 0.5]` at every position `p` of `seq`.
    fn fill(p: &mut BlockPool, seq: &SeqBlocks) {
        for pos in 0..seq.len {
            let x = pos as f32;
            p.storage
                .write(0, &seq.table, pos, &[x, x + 0.5], &[-x, -x - 0.5]);
        }
    }

    /// The key and value rows at positions `range` of `seq`.
    fn rows(p: &BlockPool, seq: &SeqBlocks, range: std::ops::Range<usize>) -> Vec<[f32; 4]> {
        let layer = p.storage.layer(0, &seq.table);
        range
            .map(|pos| {
                let at = (seq.table[pos / 8] as usize * 8 + pos % 8) * 2;
                [layer.k[at], layer.k[at + 1], layer.v[at], layer.v[at + 1]]
            })
            .collect()
    }

    #[test]
    fn a_shared_prefix_is_reused_to_the_token_and_evicted_last_used_first() {
        let mut p = pool(8);
        let prompt: Vec<u32> = (0..20).collect();
        let mut a = SeqBlocks::default();
        assert!(p.grow(&mut a, 3));
        a.len = 20;
        fill(&mut p, &a);
        let written = rows(&p, &a, 0..20);
        p.register(&a, &prompt);
        let first = a.table.clone();
        p.release(&mut a);
        assert_eq!(p.idle(), 3, "two full blocks and the partial third cached");
        // Same first 18 tokens: both full blocks shared, two positions of the third copied into
        // a block of its own.
        let mut other = prompt.clone();
        other[18] = 99;
        let hit = p.lookup(&other);
        assert_eq!((hit.len, &hit.table[..2]), (18, &first[..2]));
        assert_eq!(hit.table.len(), 3);
        assert!(
            !first.contains(&hit.table[2]),
            "the partial block is copied, not shared"
        );
        assert_eq!(rows(&p, &hit, 0..18), written[..18]);
        assert_eq!(p.idle(), 1, "the copied-from block is idle again");
        // Differing in the first block: its first three positions are copied.
        let mut third = prompt.clone();
        third[3] = 7;
        let hit3 = p.lookup(&third);
        assert_eq!((hit3.len, hit3.table.len()), (3, 1));
        assert_eq!(rows(&p, &hit3, 0..3), written[..3]);
        // A prompt of exactly 16 tokens keeps its last token to compute; so does the same prompt.
        let hit16 = p.lookup(&prompt[..16]);
        assert_eq!((hit16.len, hit16.table[0]), (15, first[0]));
        assert_eq!(rows(&p, &hit16, 0..15), written[..15]);
        let same = p.lookup(&prompt);
        assert_eq!((same.len, &same.table[..2]), (19, &first[..2]));
        assert_eq!(rows(&p, &same, 0..19), written[..19]);
        // Demand for every block evicts the cached ones and forgets them.
        for mut h in [hit, hit3, hit16, same] {
            p.release(&mut h);
        }
        assert_eq!((p.available(), p.idle()), (8, 3));
        let mut b = SeqBlocks::default();
        assert!(p.grow(&mut b, 8));
        assert!(p.children.is_empty() && p.by_hash.is_empty());
        p.release(&mut b);
        assert_eq!(p.lookup(&prompt).len, 0);
        // Without a block to copy into (the only one left is the one to copy from), the partial
        // prefix is left to compute.
        let mut c = SeqBlocks::default();
        assert!(p.grow(&mut c, 3));
        c.len = 20;
        p.register(&c, &prompt);
        p.release(&mut c);
        let mut all = SeqBlocks::default();
        assert!(p.grow(&mut all, 5));
        let full_only = p.lookup(&other);
        assert_eq!((full_only.len, full_only.table.len()), (16, 2));
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn a_partial_block_registered_with_its_prompt_grows_with_its_sequence() {
        let mut p = pool(6);
        let context: Vec<u32> = (0..30).collect();
        let mut a = SeqBlocks::default();
        assert!(p.grow(&mut a, 4));
        // The prompt (20 tokens) is computed: its third block is cached with four positions.
        a.len = 20;
        p.register(&a, &context[..20]);
        assert_eq!(
            p.lookup(&context[..21]).len,
            20,
            "prompt found while its sequence runs"
        );
        // The sequence ends at 30: the third block is full now and shared whole.
        a.len = 30;
        p.register(&a, &context);
        let third = a.table[2];
        p.release(&mut a);
        let hit = p.lookup(&context[..25]);
        assert_eq!((hit.len, hit.table[2]), (24, third));
    }
}
