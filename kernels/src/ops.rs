//! Element-wise and per-row kernels of a transformer layer: RMSNorm, RoPE, SwiGLU, softmax and
//! causal attention of k query rows over a KV cache. Each works row by row, so results do not
//! depend on how many rows share a call.

use cascade_weights::RopeStyle;
use rayon::prelude::*;

use crate::matmul::{dot, dot8};

/// `out[r] = x[r] / rms(x[r]) * w` for each row of length `w.len()`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss = dot(xr, xr);
        let scale = 1.0 / (ss / n as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    // Per element, so splitting across threads changes nothing; `exp` is the costly part (a
    // forward of 8 tokens through the 1.5B model makes 2 M calls).
    const CHUNK: usize = 4096;
    gate.par_chunks_mut(CHUNK)
        .zip(up.par_chunks(CHUNK))
        .for_each(|(gate, up)| {
            for (g, u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + exp(-*g)) * u;
            }
        });
}

/// `e^x` within 2 ulp of the correctly rounded value for `x` in `[-87.3, 88.3]` (clamped to
/// that range outside it: 1.2e-38 and 2.1e38), from plain `f32` operations only, so that LLVM
/// vectorizes loops of it and a scalar call gives bitwise the same result as a vector lane.
/// Cody-Waite reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and Cephes' `expf` polynomial.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding and removing 1.5 * 2^23 rounds to the nearest integer (ties to even) for
    // |v| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4;
    let r = r - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes' 5.0000001201e-1, which rounds to 0.5 in f32
    let e = p * (r * r) + r + 1.0;
    // n is an integer in [-126, 127]: n + 127 + 2^23 holds n + 127 in its low mantissa bits,
    // which the shift moves into the exponent field, giving 2^n (no float-to-int cast, whose
    // saturating form does not vectorize).
    e * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Rotary embeddings in place on `x` = `[n_tokens][n_heads][head_dim]`, token `t` at `positions[t]`.
pub fn rope(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    positions: &[usize],
    theta: f32,
    style: RopeStyle,
) {
    let half = head_dim / 2;
    let theta_scale = theta.powf(-2.0 / head_dim as f32);
    // Stack space for the angles: head dimensions up to 512 (every model family we load).
    assert!(half <= 256, "rope: head_dim {head_dim} exceeds 512");
    let mut cs_buf = [(0f32, 0f32); 256];
    let cs = &mut cs_buf[..half];
    for (t, tok) in x.chunks_exact_mut(n_heads * head_dim).enumerate() {
        let mut angle = positions[t] as f32;
        for c in cs.iter_mut() {
            *c = (angle.cos(), angle.sin());
            angle *= theta_scale;
        }
        for head in tok.chunks_exact_mut(head_dim) {
            for (i, &(cos, sin)) in cs.iter().enumerate() {
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Causal attention of `n_tokens` query rows (at positions `past..past + n_tokens`) over a cache
/// holding `past + n_tokens` keys and values, each row `[n_kv_heads * head_dim]`.
/// `q` and `out` are `[n_tokens][n_heads * head_dim]`; `scores` is scratch space of at least
/// [`attention_scratch`] values. Each (token, KV head) is one task: the query heads sharing that
/// KV head (grouped-query attention) read each key row and each block of value rows once for all
/// of them. Every (token, head) keeps a fixed order of operations: its scores are `dot(q, k_j)`
/// for keys in order, a softmax, and each output element the sum over keys in order of
/// `p_j * v_j` (one multiply, one add), so the result does not depend on the grouping.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    past: usize,
    s: AttentionShape,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let n_tokens = out.len() / (s.n_heads * s.head_dim);
    let seq = AttnSeq {
        row: 0,
        n_tokens,
        past,
        kv: KvLayer { k, v, pages: None },
    };
    attention_batch(q, &[seq], s, out, scores);
}

/// Where one sequence's keys and values of one layer live: rows of `kv_dim` values in `k` and
/// `v`, either in order (`pages: None`) or in fixed-size blocks (`Some((table, block))`: key `j`
/// at row `table[j / block] * block + j % block`).
#[derive(Debug, Clone, Copy)]
pub struct KvLayer<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub pages: Option<(&'a [u32], usize)>,
}

impl KvLayer<'_> {
    /// Calls `f(first_key, first_row, len)` for each run of keys `0..n_keys` stored in
    /// consecutive rows, in key order (adjacent blocks that are adjacent in memory form one run).
    #[inline]
    fn runs(&self, n_keys: usize, mut f: impl FnMut(usize, usize, usize)) {
        let Some((table, block)) = self.pages else {
            f(0, 0, n_keys);
            return;
        };
        let mut j = 0;
        while j < n_keys {
            let b = j / block;
            let row = table[b] as usize * block + j % block;
            let mut end = ((b + 1) * block).min(n_keys);
            let mut nb = b + 1;
            while end < n_keys && table[nb] == table[nb - 1] + 1 {
                nb += 1;
                end = (nb * block).min(n_keys);
            }
            f(j, row, end - j);
            j = end;
        }
    }
}

/// One sequence's part of a batched attention call: query rows `row..row + n_tokens` of the
/// batch, at positions `past..past + n_tokens`, over the keys of `kv` (which holds them all).
#[derive(Debug, Clone, Copy)]
pub struct AttnSeq<'a> {
    pub row: usize,
    pub n_tokens: usize,
    pub past: usize,
    pub kv: KvLayer<'a>,
}

/// Causal attention for a ragged batch: `q` and `out` hold `[rows][n_heads * head_dim]`, the
/// rows of each sequence of `seqs` in turn; each sequence attends over its own keys. One task per
/// (row, KV head), with its score buffer carved out of `scores`
/// ([`attention_batch_scratch`] values). Per (row, head) the operations and their order are
/// those of the plain per-key loop whatever the batch, the block layout or the thread count:
/// `dot8` is bitwise eight `dot`s, and the weighted value sums add keys in order.
pub fn attention_batch(
    q: &[f32],
    seqs: &[AttnSeq],
    s: AttentionShape,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let group = s.n_heads / s.n_kv_heads;
    let width = group * s.head_dim;
    let mut tasks = Vec::with_capacity(out.len() / width);
    let (mut outs, mut sc) = (&mut out[..], &mut scores[..]);
    for (si, seq) in seqs.iter().enumerate() {
        for t in 0..seq.n_tokens {
            let n_keys = seq.past + t + 1;
            for kvh in 0..s.n_kv_heads {
                let (o, rest) = std::mem::take(&mut outs).split_at_mut(width);
                let (c, rest_sc) = std::mem::take(&mut sc).split_at_mut(group * n_keys);
                outs = rest;
                sc = rest_sc;
                tasks.push((si, seq.row + t, n_keys, kvh, o, c));
            }
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(si, row, n_keys, kvh, o, sc)| {
            let qt = &q[row * s.n_heads * s.head_dim + kvh * width..][..width];
            head_group(qt, &seqs[si].kv, n_keys, kvh, s, o, sc);
        });
}

/// Attention of one row's query group (the heads sharing KV head `kvh`) over `n_keys` keys.
#[inline]
fn head_group(
    qt: &[f32],
    kv: &KvLayer,
    n_keys: usize,
    kvh: usize,
    s: AttentionShape,
    o: &mut [f32],
    sc: &mut [f32],
) {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    // Eight keys at a time (`dot8`: bitwise eight `dot`s), the rest of a run one by one.
    kv.runs(n_keys, |j0, row0, len| {
        let full = len / 8 * 8;
        for j in (0..full).step_by(8) {
            let kj = &kv.k[(row0 + j) * kv_dim + kvh * hd..];
            for (g, qh) in qt.chunks_exact(hd).enumerate() {
                let d = dot8(qh, kj, kv_dim);
                for (m, x) in d.iter().enumerate() {
                    sc[g * n_keys + j0 + j + m] = x * scale;
                }
            }
        }
        for j in full..len {
            let kj = &kv.k[(row0 + j) * kv_dim + kvh * hd..][..hd];
            for (g, qh) in qt.chunks_exact(hd).enumerate() {
                sc[g * n_keys + j0 + j] = dot(qh, kj) * scale;
            }
        }
    });
    for g in sc.chunks_exact_mut(n_keys) {
        softmax(g);
    }
    o.fill(0.0);
    kv.runs(n_keys, |j0, row0, len| {
        for c0 in (0..len).step_by(VKEYS) {
            let c1 = (c0 + VKEYS).min(len);
            let vb = &kv.v[(row0 + c0) * kv_dim..];
            for (g, og) in o.chunks_exact_mut(hd).enumerate() {
                let p = &sc[g * n_keys + j0 + c0..g * n_keys + j0 + c1];
                weighted_rows(p, vb, kv_dim, kvh * hd, og);
            }
        }
    });
}

/// Scratch values [`attention_batch`] needs for `seqs` with `n_heads` query heads.
pub fn attention_batch_scratch(seqs: &[AttnSeq], n_heads: usize) -> usize {
    seqs.iter()
        .map(|q| attention_scratch(q.n_tokens, q.past, n_heads))
        .sum()
}

/// `o[i] += Σ_j p[j] · v[j * stride + off + i]`, summed over `j` in order onto the value `o[i]`
/// holds, one multiply then one add per term. Chunks of [`VCHUNK`] outputs stay in registers
/// across the keys instead of going through memory once per key (which made the loop store
/// bound).
#[inline(always)]
fn weighted_rows(p: &[f32], v: &[f32], stride: usize, off: usize, o: &mut [f32]) {
    let mut start = 0;
    for oc in o.chunks_mut(VCHUNK) {
        let mut acc = [0f32; VCHUNK];
        let w = oc.len();
        acc[..w].copy_from_slice(oc);
        if w == VCHUNK {
            // The whole array, so that the width is a constant once inlined.
            add_weighted(&mut acc, p, v, stride, off + start);
        } else {
            add_weighted(&mut acc[..w], p, v, stride, off + start);
        }
        oc.copy_from_slice(&acc[..w]);
        start += w;
    }
}

/// `acc[i] += p[j] · v[j * stride + at + i]` for each `j` in order.
#[inline(always)]
fn add_weighted(acc: &mut [f32], p: &[f32], v: &[f32], stride: usize, at: usize) {
    let w = acc.len();
    for (j, &pj) in p.iter().enumerate() {
        for (a, &b) in acc.iter_mut().zip(&v[j * stride + at..][..w]) {
            *a += pj * b;
        }
    }
}

/// Keys whose value rows the heads of a group take in turn (64 rows of a 128-wide head: 32 KB,
/// resident in L1 while every head of the group adds them).
const VKEYS: usize = 64;

/// Output values of one head that [`weighted_rows`] keeps in registers at once.
const VCHUNK: usize = 64;

/// Scratch values [`attention`] needs for `n_tokens` queries over `past + n_tokens` keys.
pub fn attention_scratch(n_tokens: usize, past: usize, n_heads: usize) -> usize {
    n_tokens * n_heads * (past + n_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_normalises() {
        let x = [3.0, 4.0];
        let mut out = [0.0; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn rope_styles_rotate_the_right_pairs() {
        // At position 0 nothing changes; at position 1 the first pair rotates by 1 radian.
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut x, 1, 4, &[1], 10000.0, RopeStyle::Interleaved);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        let mut y = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut y, 1, 4, &[1], 10000.0, RopeStyle::Neox);
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6);
        let mut z = vec![0.3, 0.5, 0.7, 0.9];
        let before = z.clone();
        rope(&mut z, 1, 4, &[0], 10000.0, RopeStyle::Neox);
        assert_eq!(z, before);
    }

    #[test]
    fn attention_over_one_key_returns_its_value() {
        let s = AttentionShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [0.5, 0.5];
        let v = [2.0, 3.0];
        let mut out = [0.0; 4];
        attention(&q, &k, &v, 0, s, &mut out, &mut [0.0; 2]);
        assert_eq!(out, [2.0, 3.0, 2.0, 3.0]);
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_over_its_range() {
        let mut worst = 0u32;
        let mut x = -87.3f32;
        while x <= 88.3 {
            let (a, b) = (exp(x), (x as f64).exp() as f32);
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            x += 0.0137;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(f32::NAN).is_nan());
        // A vector lane and a scalar call agree bitwise (the loop below vectorizes).
        let xs: Vec<f32> = (0..64).map(|i| i as f32 * 0.37 - 11.0).collect();
        let mut g = xs.clone();
        silu_mul(&mut g, &vec![1.0; 64]);
        for (&x, &y) in xs.iter().zip(&g) {
            assert_eq!(y.to_bits(), (x / (1.0 + exp(-x))).to_bits());
        }
    }

    #[test]
    fn grouped_attention_is_bitwise_the_per_head_loop() {
        // One (token, head) at a time, written out plainly: the definition the grouped tasks
        // must keep for every group size, head width, token count and cache length.
        let f = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 977.0;
        for (n_heads, n_kv_heads, head_dim) in [(4, 4, 16), (12, 2, 128), (14, 2, 64), (6, 3, 72)] {
            for (n_tokens, past) in [(1, 0), (1, 150), (5, 128), (3, 7)] {
                let s = AttentionShape {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                };
                let (q_dim, kv_dim) = (n_heads * head_dim, n_kv_heads * head_dim);
                let keys = past + n_tokens;
                let q: Vec<f32> = (0..n_tokens * q_dim).map(f).collect();
                let k: Vec<f32> = (0..keys * kv_dim).map(|i| f(i + 11)).collect();
                let v: Vec<f32> = (0..keys * kv_dim).map(|i| f(i + 29)).collect();
                let mut out = vec![f32::NAN; n_tokens * q_dim];
                let mut sc = vec![0f32; attention_scratch(n_tokens, past, n_heads)];
                attention(&q, &k, &v, past, s, &mut out, &mut sc);
                let scale = 1.0 / (head_dim as f32).sqrt();
                for t in 0..n_tokens {
                    for h in 0..n_heads {
                        let kvh = h / (n_heads / n_kv_heads);
                        let qh = &q[t * q_dim + h * head_dim..][..head_dim];
                        let mut p: Vec<f32> = (0..past + t + 1)
                            .map(|j| dot(qh, &k[j * kv_dim + kvh * head_dim..][..head_dim]) * scale)
                            .collect();
                        softmax(&mut p);
                        for i in 0..head_dim {
                            let mut want = 0f32;
                            for (j, &pj) in p.iter().enumerate() {
                                want += pj * v[j * kv_dim + kvh * head_dim + i];
                            }
                            let got = out[t * q_dim + h * head_dim + i];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "heads {n_heads}/{n_kv_heads} dim {head_dim} t {t} h {h} i {i}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Scatters `rows` (`[n][kv_dim]`) into blocks of `block` rows taken from `table`, in a pool
    /// of `n_blocks` blocks filled with NaN elsewhere (a stray read shows).
    fn scatter(
        rows: &[f32],
        kv_dim: usize,
        table: &[u32],
        block: usize,
        n_blocks: usize,
    ) -> Vec<f32> {
        let mut pool = vec![f32::NAN; n_blocks * block * kv_dim];
        for (j, r) in rows.chunks_exact(kv_dim).enumerate() {
            let at = (table[j / block] as usize * block + j % block) * kv_dim;
            pool[at..at + kv_dim].copy_from_slice(r);
        }
        pool
    }

    #[test]
    fn paged_batched_attention_is_bitwise_each_sequence_alone() {
        // Three sequences of different lengths in one call, their keys scattered over blocks in
        // a shuffled order (some adjacent, most not), against each run alone and contiguous.
        let f = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 977.0;
        let s = AttentionShape {
            n_heads: 12,
            n_kv_heads: 2,
            head_dim: 64,
        };
        let (q_dim, kv_dim, block) = (12 * 64, 2 * 64, 16);
        let seqs_spec = [(1usize, 0usize), (5, 37), (3, 130)];
        let n_blocks = 40;
        let mut order: Vec<u32> = (0..n_blocks as u32).collect();
        order.reverse();
        order.swap(3, 17);
        let (mut rows, mut next) = (0, 0);
        let mut want = Vec::new();
        let mut q_all = Vec::new();
        let mut specs = Vec::new();
        for (si, &(n, past)) in seqs_spec.iter().enumerate() {
            let keys = past + n;
            let q: Vec<f32> = (0..n * q_dim).map(|i| f(i + 97 * si)).collect();
            let k: Vec<f32> = (0..keys * kv_dim).map(|i| f(i + 11 + si)).collect();
            let v: Vec<f32> = (0..keys * kv_dim).map(|i| f(i + 29 + si)).collect();
            let mut out = vec![0f32; n * q_dim];
            let mut sc = vec![0f32; attention_scratch(n, past, 12)];
            attention(&q, &k, &v, past, s, &mut out, &mut sc);
            want.extend(out);
            q_all.extend(q);
            let nb = keys.div_ceil(block);
            let table: Vec<u32> = order[next..next + nb].to_vec();
            next += nb;
            specs.push((rows, n, past, table, k, v));
            rows += n;
        }
        // One pool per sequence here (the kernel only needs each sequence's own k and v).
        let pools: Vec<(Vec<f32>, Vec<f32>)> = specs
            .iter()
            .map(|(_, _, _, t, k, v)| {
                (
                    scatter(k, kv_dim, t, block, n_blocks),
                    scatter(v, kv_dim, t, block, n_blocks),
                )
            })
            .collect();
        let seqs: Vec<AttnSeq> = specs
            .iter()
            .zip(&pools)
            .map(|((row, n, past, table, _, _), (pk, pv))| AttnSeq {
                row: *row,
                n_tokens: *n,
                past: *past,
                kv: KvLayer {
                    k: pk,
                    v: pv,
                    pages: Some((table, block)),
                },
            })
            .collect();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![f32::NAN; rows * q_dim];
            let mut sc = vec![0f32; attention_batch_scratch(&seqs, 12)];
            pool.install(|| attention_batch(&q_all, &seqs, s, &mut out, &mut sc));
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "threads {threads} value {i}");
            }
        }
    }

    #[test]
    fn weighted_rows_sum_in_key_order_for_any_width() {
        // Bitwise the plain loop (zero, then one multiply and one add per key, in order), for
        // widths below, at and past the register chunk.
        for width in [8, 64, 72, 128] {
            let (stride, off, keys) = (width + 5, 3, 37);
            let v: Vec<f32> = (0..keys * stride)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 333.0)
                .collect();
            let p: Vec<f32> = (0..keys).map(|j| 1.0 / (j as f32 + 1.5)).collect();
            let mut o = vec![0f32; width];
            // In two calls, as attention takes the keys in blocks.
            weighted_rows(&p[..20], &v, stride, off, &mut o);
            weighted_rows(&p[20..], &v[20 * stride..], stride, off, &mut o);
            let mut want = vec![0f32; width];
            for (j, &pj) in p.iter().enumerate() {
                for (i, w) in want.iter_mut().enumerate() {
                    *w += pj * v[j * stride + off + i];
                }
            }
            assert_eq!(
                o.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "width {width}"
            );
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, -1e9];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
    }
}
