//! Buffers of one forward pass, kept between passes so the decode loop does not allocate.

use cascade_kernels::{ActBlock, Q8Acts};

/// The input of a group of matrix products, quantized on first use for each block length
/// (the products that share an input, such as Q, K and V, quantize it once).
#[derive(Debug, Clone)]
pub(crate) struct SharedInput {
    b32: Q8Acts,
    b256: Q8Acts,
    fresh32: bool,
    fresh256: bool,
}

impl Default for SharedInput {
    fn default() -> Self {
        SharedInput {
            b32: Q8Acts::new(ActBlock::B32),
            b256: Q8Acts::new(ActBlock::B256),
            fresh32: false,
            fresh256: false,
        }
    }
}

impl SharedInput {
    /// Forgets the quantized copies: the input changed.
    pub fn reset(&mut self) {
        self.fresh32 = false;
        self.fresh256 = false;
    }

    /// `x` (`[n][cols]`) quantized to `block`, computing it only if not yet done since `reset`.
    pub fn get(&mut self, block: ActBlock, x: &[f32], n: usize, cols: usize) -> &Q8Acts {
        let (acts, fresh) = match block {
            ActBlock::B32 => (&mut self.b32, &mut self.fresh32),
            ActBlock::B256 => (&mut self.b256, &mut self.fresh256),
        };
        if !*fresh {
            acts.quantize(x, n, cols);
            *fresh = true;
        }
        acts
    }
}

/// Every activation buffer of a forward pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scratch {
    pub x: Vec<f32>,
    pub xn: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub attn: Vec<f32>,
    pub proj: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub scores: Vec<f32>,
    pub input: SharedInput,
}

/// Resizes `v` to `n` values (keeping its allocation once it is large enough).
pub(crate) fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}
