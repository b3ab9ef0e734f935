//! Activations quantized to 8-bit blocks for the integer matrix products.
//!
//! Each token row is cut into blocks of 32 values (for the 32-value weight types: Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0) or 256 values (for the K-quant super-blocks: Q4_K, Q5_K, Q6_K), as ggml's
//! `block_q8_0` and `block_q8_K`. A block stores `q = round(x / d)` in `[-127, 127]` with
//! `d = max|x| / 127`, plus the integer sum of every 16 `q`s, which the weight types with a
//! minimum or an offset need. A row is quantized on its own, so the result never depends on the
//! other rows of the batch.

/// Block length of quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActBlock {
    /// 32 values per scale (ggml `q8_0`).
    B32,
    /// 256 values per scale (ggml `q8_K`).
    B256,
}

impl ActBlock {
    pub fn values(self) -> usize {
        match self {
            ActBlock::B32 => 32,
            ActBlock::B256 => 256,
        }
    }
}

/// `n` token rows of `cols` values, quantized. Buffers are kept between calls.
#[derive(Debug, Clone)]
pub struct Q8Acts {
    pub(crate) block: ActBlock,
    pub(crate) n: usize,
    pub(crate) cols: usize,
    /// `[n][cols]` quantized values.
    pub(crate) qs: Vec<i8>,
    /// `[n][cols / block]` scales.
    pub(crate) d: Vec<f32>,
    /// `[n][cols / 16]` sums of 16 consecutive `qs` (at most 16 * 127 in magnitude).
    pub(crate) sums16: Vec<i16>,
    /// `[n][cols / 32]` sums of 32 consecutive `qs` (at most 32 * 127 in magnitude): two
    /// sub-blocks' sums per 32-bit lane for the Q4_K minimum term.
    pub(crate) sums32: Vec<i16>,
    /// `[n][cols / 32]`: `d` of the value's block times the sum of the 32 `qs` (for weight types
    /// whose blocks carry a minimum or an offset).
    pub(crate) dsum32: Vec<f32>,
}

impl Default for Q8Acts {
    fn default() -> Self {
        Q8Acts::new(ActBlock::B32)
    }
}

impl Q8Acts {
    /// Token rows quantized.
    pub fn n(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn block(&self) -> ActBlock {
        self.block
    }

    /// Whether every buffer holds what `n`, `cols` and `block` say (the kernels read them with
    /// unchecked loads sized by those three).
    pub(crate) fn consistent(&self) -> bool {
        let Some(values) = self.n.checked_mul(self.cols) else {
            return false;
        };
        let b = self.block.values();
        self.cols.is_multiple_of(b)
            && self.qs.len() >= values
            && self.d.len() >= values / b
            && self.sums16.len() >= values / 16
            && self.sums32.len() >= values / 32
            && self.dsum32.len() >= values / 32
    }

    pub fn new(block: ActBlock) -> Q8Acts {
        Q8Acts {
            block,
            n: 0,
            cols: 0,
            qs: Vec::new(),
            d: Vec::new(),
            sums16: Vec::new(),
            sums32: Vec::new(),
            dsum32: Vec::new(),
        }
    }

    /// Quantizes `x` = `[n][cols]`; `cols` must be a multiple of the block length.
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize) {
        let bl = self.block.values();
        assert!(
            cols.is_multiple_of(bl) && x.len() == n * cols,
            "Q8Acts::quantize: [{n}, {cols}] with blocks of {bl}, {} values",
            x.len()
        );
        self.n = n;
        self.cols = cols;
        self.qs.resize(n * cols, 0);
        self.d.resize(n * cols / bl, 0.0);
        self.sums16.resize(n * cols / 16, 0);
        self.sums32.resize(n * cols / 32, 0);
        self.dsum32.resize(n * cols / 32, 0.0);
        for (b, xb) in x.chunks_exact(bl).enumerate() {
            // The maximum in 16 lanes, then across them: max is exact, so the result is the
            // sequential fold's, and the loop vectorizes.
            let mut lanes = [0f32; 16];
            for c in xb.chunks_exact(16) {
                for (m, v) in lanes.iter_mut().zip(c) {
                    *m = m.max(v.abs());
                }
            }
            let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.d[b] = d;
            let qb = &mut self.qs[b * bl..(b + 1) * bl];
            for (q, &v) in qb.iter_mut().zip(xb) {
                // `max` and `min` map NaN to -127 and keep the value in [-127, 127]; the
                // saturating `as` casts do not vectorize, so the cast is the unchecked one.
                #[allow(clippy::manual_clamp)] // clamp keeps NaN, which the cast must not see
                let r = round_half_away(v * id).max(-127.0).min(127.0);
                // SAFETY: `r` is an integer in [-127, 127], never NaN.
                *q = unsafe { r.to_int_unchecked::<i32>() } as i8;
            }
            for (i, s) in qb.chunks_exact(16).enumerate() {
                self.sums16[b * bl / 16 + i] = s.iter().map(|&q| q as i16).sum();
            }
            for i in 0..bl / 32 {
                let s = self.sums16[b * bl / 16 + 2 * i] as i32
                    + self.sums16[b * bl / 16 + 2 * i + 1] as i32;
                self.sums32[b * bl / 32 + i] = s as i16;
                self.dsum32[b * bl / 32 + i] = d * s as f32;
            }
        }
    }

    /// Quantized values of token `t`.
    pub fn row(&self, t: usize) -> &[i8] {
        &self.qs[t * self.cols..(t + 1) * self.cols]
    }

    /// Scales of token `t`.
    pub fn scales(&self, t: usize) -> &[f32] {
        let nb = self.cols / self.block.values();
        &self.d[t * nb..(t + 1) * nb]
    }

    /// Sums of 16 of token `t`.
    pub fn sums16(&self, t: usize) -> &[i16] {
        let n = self.cols / 16;
        &self.sums16[t * n..(t + 1) * n]
    }

    /// `d * Σq` per 32 values of token `t`.
    pub fn dsum32(&self, t: usize) -> &[f32] {
        let n = self.cols / 32;
        &self.dsum32[t * n..(t + 1) * n]
    }

    /// The values as the products see them: `q * d` (for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let bl = self.block.values();
        self.qs
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.d[i / bl])
            .collect()
    }
}

/// `x.round()` (halves away from zero), bitwise, from operations that vectorize (the
/// library call does not): the truncation plus one, away from zero, where the dropped fraction
/// (exact: `x - trunc(x)` loses nothing) is at least a half.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let t = x.trunc();
    let up = if (x - t).abs() >= 0.5 { 1f32 } else { 0f32 };
    t + up.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_half_a_step() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for block in [ActBlock::B32, ActBlock::B256] {
            let mut a = Q8Acts::new(block);
            a.quantize(&x, 2, 256);
            let y = a.dequantize();
            for (i, (u, v)) in x.iter().zip(&y).enumerate() {
                let d = a.d[i / block.values()];
                assert!((u - v).abs() <= 0.5 * d + 1e-6, "{block:?} {i}: {u} vs {v}");
            }
            let s: i16 = a.row(1)[..16].iter().map(|&q| q as i16).sum();
            assert_eq!(a.sums16(1)[0], s);
        }
    }

    #[test]
    fn rounding_matches_the_library_round() {
        let mut xs = vec![
            0.5f32,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.499_999_97,
            -0.499_999_97,
            126.5,
            -126.5,
        ];
        xs.extend([
            8_388_607.5f32,
            8_388_608.0,
            1e9,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
        ]);
        let mut x = -130.0f32;
        while x < 130.0 {
            xs.push(x);
            x += 0.012_5;
        }
        for &x in &xs {
            assert_eq!(round_half_away(x).to_bits(), x.round().to_bits(), "{x}");
        }
    }

    #[test]
    fn zero_rows_quantize_to_zero() {
        let mut a = Q8Acts::new(ActBlock::B32);
        a.quantize(&[0.0; 64], 1, 64);
        assert!(a.qs.iter().all(|&q| q == 0) && a.d.iter().all(|&d| d == 0.0));
    }
}
