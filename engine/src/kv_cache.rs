//! KV memory. [`KvStorage`] holds keys and values of every layer in fixed-size blocks of
//! positions; a sequence reads and writes them through its block table. [`KvCache`] is one
//! sequence with storage of its own (its table is the blocks in order), rolled back to any
//! earlier length; the scheduler's paged pool (`scheduler::kv`) shares one storage between many.

use cascade_kernels::ops::KvLayer;

use crate::error::{EngineError, Result};
use crate::scratch::Scratch;

/// Positions per block of a [`KvCache`]'s own storage.
const OWN_BLOCK: usize = 16;

/// A zeroed f32 buffer in an anonymous mapping of its own: the kernel hands out zero pages
/// lazily, so a KV pool sized by a budget costs resident memory only where it has been written
/// (a heap allocation of the same size may be zeroed eagerly, touching every page).
#[derive(Debug)]
struct Zeroed {
    map: memmap2::MmapMut,
    len: usize,
}

impl Zeroed {
    /// `len` zeroed values; an error when their bytes overflow or cannot be mapped.
    fn new(len: usize) -> Result<Zeroed> {
        // A zero-length mapping is refused by the OS: map one value at least.
        let bytes = len
            .max(1)
            .checked_mul(std::mem::size_of::<f32>())
            .ok_or(kv_too_large())?;
        let map = memmap2::MmapMut::map_anon(bytes).map_err(|e| EngineError::KvAlloc {
            bytes,
            reason: e.to_string(),
        })?;
        Ok(Zeroed { map, len })
    }
}

/// A KV size whose arithmetic overflows.
fn kv_too_large() -> EngineError {
    EngineError::Limit {
        what: "the KV cache's size in bytes",
        limit: usize::MAX as u64,
    }
}

impl std::ops::Deref for Zeroed {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: the mapping is page-aligned (so aligned for f32), at least `len * 4` bytes long,
        // zero-filled at creation (all-zero bytes are a valid f32), and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<f32>(), self.len) }
    }
}

impl std::ops::DerefMut for Zeroed {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// Keys and values of every layer: `[block][position in block][kv_dim]` per layer, in anonymous
/// mappings: untouched blocks cost no resident memory.
#[derive(Debug)]
pub struct KvStorage {
    k: Vec<Zeroed>,
    v: Vec<Zeroed>,
    kv_dim: usize,
    block: usize,
    n_blocks: usize,
    /// The same blocks on the device of a model placed there (the host mappings then stay
    /// untouched, costing no resident memory).
    #[cfg_attr(not(any(feature = "cuda", feature = "shim")), allow(dead_code))]
    pub(crate) device: Option<crate::model::DeviceKv>,
}

impl KvStorage {
    /// Storage for `n_blocks` blocks of `block` positions of `kv_dim` keys and values in each
    /// of `n_layers` layers. The sizes come from model files and budgets: arithmetic that
    /// overflows, or memory that cannot be mapped, is an error.
    pub fn new(n_layers: usize, kv_dim: usize, block: usize, n_blocks: usize) -> Result<KvStorage> {
        let n = n_blocks
            .checked_mul(block)
            .and_then(|x| x.checked_mul(kv_dim))
            .ok_or(kv_too_large())?;
        // The whole storage's bytes must be representable too (`bytes()`).
        Self::bytes_per_position(n_layers, kv_dim)
            .and_then(|b| b.checked_mul(n_blocks)?.checked_mul(block))
            .ok_or(kv_too_large())?;
        let zeroed = || {
            (0..n_layers)
                .map(|_| Zeroed::new(n))
                .collect::<Result<Vec<_>>>()
        };
        Ok(KvStorage {
            k: zeroed()?,
            v: zeroed()?,
            kv_dim,
            block,
            n_blocks,
            device: None,
        })
    }

    /// Bytes of one position of every layer, keys and values (`None` past `usize`).
    pub fn bytes_per_position(n_layers: usize, kv_dim: usize) -> Option<usize> {
        n_layers
            .checked_mul(kv_dim)?
            .checked_mul(2 * std::mem::size_of::<f32>())
    }

    pub fn block(&self) -> usize {
        self.block
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Bytes held (reserved; resident only where written).
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_blocks * self.block * self.kv_dim * 4
    }

    /// Writes keys and values (`[n][kv_dim]` each) of one layer for positions `pos..pos + n` of
    /// the sequence whose blocks are `table`.
    pub(crate) fn write(&mut self, layer: usize, table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let (kv, b) = (self.kv_dim, self.block);
        for (i, (kr, vr)) in k.chunks_exact(kv).zip(v.chunks_exact(kv)).enumerate() {
            let p = pos + i;
            let at = (table[p / b] as usize * b + p % b) * kv;
            self.k[layer][at..at + kv].copy_from_slice(kr);
            self.v[layer][at..at + kv].copy_from_slice(vr);
        }
    }

    /// Copies the first `n` positions of block `from` into block `to`, every layer (a shared
    /// prefix that ends inside a block, reused by a new sequence), on the device when the
    /// storage lives there.
    pub(crate) fn copy_positions(&mut self, from: u32, to: u32, n: usize) -> Result<()> {
        assert!(
            n <= self.block,
            "copy of {n} positions, blocks of {}",
            self.block
        );
        if let Some(d) = &self.device {
            return d.copy_positions(from, to, n);
        }
        let (kv, b) = (self.kv_dim, self.block);
        let (src, dst) = (from as usize * b * kv, to as usize * b * kv);
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.copy_within(src..src + n * kv, dst);
        }
        Ok(())
    }

    /// One layer of the sequence whose blocks are `table`, for attention.
    pub(crate) fn layer<'a>(&'a self, layer: usize, table: &'a [u32]) -> KvLayer<'a> {
        KvLayer {
            k: &self.k[layer],
            v: &self.v[layer],
            pages: Some((table, self.block)),
        }
    }
}

/// The KV cache of one sequence: storage of its own for `capacity` positions, rolled back to any
/// earlier length.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) storage: KvStorage,
    /// Its blocks in order.
    pub(crate) table: Vec<u32>,
    len: usize,
    capacity: usize,
    committed: usize,
    /// The sequence's forward-pass buffers, kept so that decoding does not allocate.
    pub(crate) scratch: Scratch,
}

impl KvCache {
    /// A cache of `capacity` positions; an error when its size overflows or cannot be mapped,
    /// or its blocks outnumber the block ids.
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> Result<KvCache> {
        let n_blocks = capacity.div_ceil(OWN_BLOCK);
        let ids = u32::try_from(n_blocks).map_err(|_| kv_too_large())?;
        Ok(KvCache {
            storage: KvStorage::new(n_layers, kv_dim, OWN_BLOCK, n_blocks)?,
            table: (0..ids).collect(),
            len: 0,
            capacity,
            committed: 0,
            scratch: Scratch::default(),
        })
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Length at the last `commit()`.
    pub fn committed(&self) -> usize {
        self.committed
    }

    /// Forgets every position from `len` on. Later writes overwrite them.
    pub fn rollback_to(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(EngineError::BadRollback {
                to: len,
                len: self.len,
            });
        }
        self.len = len;
        self.committed = self.committed.min(len);
        Ok(())
    }

    /// Marks the current length as accepted.
    pub fn commit(&mut self) {
        self.committed = self.len;
    }

    /// Returns to the last committed length.
    pub fn rollback(&mut self) {
        self.len = self.committed;
    }

    /// Checks that `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(EngineError::CacheFull {
                len: self.len,
                adding: n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.storage.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_and_commit() {
        let mut c = KvCache::new(1, 2, 4).unwrap();
        c.advance(2);
        c.commit();
        c.advance(1);
        assert_eq!(c.len(), 3);
        c.rollback();
        assert_eq!(c.len(), 2);
        assert!(c.rollback_to(3).is_err());
        c.rollback_to(1).unwrap();
        assert_eq!(c.committed(), 1);
        assert!(c.reserve(3).is_ok());
        assert!(matches!(c.reserve(4), Err(EngineError::CacheFull { .. })));
    }

    /// Sizes from a model file or a budget whose arithmetic overflows are errors (release
    /// builds do not check overflow: unchecked, they wrapped to a small mapping the kernels
    /// then wrote past).
    #[test]
    fn sizes_that_overflow_are_errors() {
        let big = usize::MAX / 4;
        for (layers, dim, block, blocks) in [(1, big, 16, 8), (1, 8, big, 2), (big, 8, 16, 1)] {
            assert!(
                matches!(
                    KvStorage::new(layers, dim, block, blocks),
                    Err(EngineError::Limit { .. })
                ),
                "{layers} {dim} {block} {blocks}"
            );
        }
        assert!(KvCache::new(2, big, 1 << 20).is_err());
        assert_eq!(KvStorage::bytes_per_position(big, 8), None);
        // A size the machine cannot map is an error too, not an abort.
        assert!(KvStorage::new(1, 1 << 20, 1 << 20, 1 << 10).is_err());
    }

    #[test]
    fn storage_writes_through_the_block_table() {
        let mut s = KvStorage::new(1, 2, 8, 3).unwrap();
        let table = [2u32, 0];
        let k: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        s.write(0, &table, 0, &k, &v);
        let l = s.layer(0, &table);
        // Position 9 lives in block 0, row 1; position 3 in block 2, row 3.
        assert_eq!(&l.k[2..4], &[18.0, 19.0]);
        assert_eq!(&l.k[(2 * 8 + 3) * 2..][..2], &[6.0, 7.0]);
        assert_eq!(&l.v[(2 * 8 + 3) * 2..][..2], &[-6.0, -7.0]);
    }
}
