//! The KV cache of one sequence: sized to the request, rolled back to any earlier length.

use crate::error::{EngineError, Result};
use crate::scratch::Scratch;

/// Keys and values of every layer, `[position][kv_dim]` each, for up to `capacity` positions.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
    committed: usize,
    /// The sequence's forward-pass buffers, kept so that decoding does not allocate.
    pub(crate) scratch: Scratch,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            k: vec![vec![0.0; capacity * kv_dim]; n_layers],
            v: vec![vec![0.0; capacity * kv_dim]; n_layers],
            kv_dim,
            len: 0,
            capacity,
            committed: 0,
            scratch: Scratch::default(),
        }
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

    /// Writes keys and values for positions `len..len + n` of one layer.
    pub(crate) fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let at = self.len * self.kv_dim;
        self.k[layer][at..at + k.len()].copy_from_slice(k);
        self.v[layer][at..at + v.len()].copy_from_slice(v);
    }

    /// Keys and values of one layer for the first `n` positions.
    pub(crate) fn layer(&self, layer: usize, n: usize) -> (&[f32], &[f32]) {
        let end = n * self.kv_dim;
        (&self.k[layer][..end], &self.v[layer][..end])
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.capacity * self.kv_dim * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_and_commit() {
        let mut c = KvCache::new(1, 2, 4);
        c.write(0, &[1.0; 4], &[2.0; 4]);
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
}
