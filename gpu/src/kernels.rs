//! The CUDA kernels: their sources (`kernels/cuda/`), their names, and the launch geometry of
//! each family for its shapes. The kernels' own header comments say what a block computes; the
//! functions here are the one place that turns shapes into grids. No CUDA types: this builds
//! without the `cuda` feature (the host shim launches the same names with the same geometry).

use cascade_weights::DType;

/// One CUDA source file.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! source {
    ($name:literal) => {
        Source {
            name: $name,
            text: include_str!(concat!("../../kernels/cuda/", $name)),
        }
    };
}

/// Headers the sources include (in dependency order).
pub const HEADERS: &[Source] = &[source!("common.cuh"), source!("vecdot.cuh")];

/// The kernel sources.
pub const SOURCES: &[Source] = &[
    source!("quantize.cu"),
    source!("mmvq.cu"),
    source!("mmq.cu"),
    source!("mmq_mma.cu"),
    source!("mv.cu"),
    source!("elementwise.cu"),
    source!("get_rows.cu"),
    source!("attention.cu"),
    source!("sample.cu"),
    source!("subset.cu"),
];

/// Every kernel (the `extern "C" __global__` functions of [`SOURCES`]).
pub const KERNELS: &[&str] = &[
    "quantize_q8_1",
    "mmvq_q4_0",
    "mmvq_q4_1",
    "mmvq_q5_0",
    "mmvq_q8_0",
    "mmvq_q4_k",
    "mmvq_q6_k",
    "mmq_q4_0",
    "mmq_q4_1",
    "mmq_q5_0",
    "mmq_q8_0",
    "mmq_q4_k",
    "mmq_q6_k",
    "mmq_mma_q4_0",
    "mmq_mma_q4_1",
    "mmq_mma_q5_0",
    "mmq_mma_q8_0",
    "mmq_mma_q4_k",
    "mmq_mma_q6_k",
    "mma_probe",
    "mv_f32",
    "mv_f16",
    "mv_bf16",
    "rms_norm",
    "add_bias",
    "add_inplace",
    "copy_f32",
    "silu_mul",
    "rope",
    "get_rows_f32",
    "get_rows_f16",
    "get_rows_bf16",
    "get_rows_q4_0",
    "get_rows_q4_1",
    "get_rows_q5_0",
    "get_rows_q8_0",
    "get_rows_q4_k",
    "get_rows_q6_k",
    "kv_store",
    "attention_paged",
    "attention_paged_split",
    "attention_combine",
    "argmax_rows",
    "topk_rows",
    "gather_bytes",
    "scatter_logits",
];

/// Kernels whose speed matters most: they must not spill registers (checked at compile tests).
pub fn is_hot(kernel: &str) -> bool {
    kernel.starts_with("mmvq_")
        || kernel.starts_with("mmq_")
        || kernel.starts_with("attention_paged")
        || kernel == "rms_norm"
        || kernel == "topk_rows"
}

/// The whole program as NVRTC compiles it: the headers, then every source, each after a `#line`
/// directive naming its file (so the log points into the real file), with the includes of our
/// own headers removed (their text is already there).
pub fn program_source() -> String {
    let mut out = String::new();
    for s in HEADERS.iter().chain(SOURCES) {
        out.push_str(&format!("#line 1 \"{}\"\n", s.name));
        for line in s.text.lines() {
            let own_include = line.trim_start().starts_with("#include \"")
                && HEADERS
                    .iter()
                    .any(|h| line.contains(&format!("\"{}\"", h.name)));
            if own_include {
                // Keep the line count, so #line stays right.
                out.push('\n');
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Grid and block dimensions of a launch, and its dynamic shared memory in bytes (the kernels
/// use static shared arrays only: always 0 here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared: u32,
}

impl Launch {
    fn new(grid: [u32; 3], threads: u32) -> Launch {
        Launch {
            grid: [grid[0].max(1), grid[1].max(1), grid[2].max(1)],
            block: [threads, 1, 1],
            shared: 0,
        }
    }
}

/// Threads of the matrix-vector kernels' blocks: the 128 K-lanes of a row's reduction.
pub const MV_LANES: u32 = 128;
/// Tokens one MMVQ / MV block takes (more go to further blocks along y).
pub const MMVQ_TOKENS: u32 = 16;
/// Rows and tokens of one MMQ tile.
pub const MMQ_ROWS: u32 = 4;
pub const MMQ_TOKENS: u32 = 8;
/// Limits of `attention_paged`.
pub const ATTENTION_MAX_HEAD_DIM: u32 = 256;
pub const ATTENTION_MAX_GROUP: u32 = 8;
/// Limit of `rope`'s head dimension.
pub const ROPE_MAX_HEAD_DIM: u32 = 512;
/// Largest k of `topk_rows`.
pub const TOPK_MAX: u32 = 64;
/// Values per `block_q8_1`, and its bytes (half2 ds + 32 int8).
pub const Q8_1_VALUES: u32 = 32;
pub const Q8_1_BYTES: u32 = 36;

/// `quantize_q8_1` of `n` rows of `cols` values (`cols` a multiple of 32): one warp per q8_1
/// block, 8 per block of 256 threads.
pub fn quantize_q8_1(cols: u32, n: u32) -> Launch {
    let blocks = (n as u64 * (cols / Q8_1_VALUES) as u64).div_ceil(8);
    Launch::new([grid_dim(blocks), 1, 1], 256)
}

/// `mmvq_<type>` for a `rows`-row matrix and `ntok` token rows: one block of 128 K-lanes per
/// (row, group of 16 tokens).
pub fn mmvq(rows: u32, ntok: u32) -> Launch {
    Launch::new([rows, ntok.div_ceil(MMVQ_TOKENS), 1], MV_LANES)
}

/// `mmq_<type>`: one block of 128 K-lanes per tile of 4 rows x 8 tokens.
pub fn mmq(rows: u32, ntok: u32) -> Launch {
    Launch::new(
        [rows.div_ceil(MMQ_ROWS), ntok.div_ceil(MMQ_TOKENS), 1],
        MV_LANES,
    )
}

/// Rows and tokens of one tensor-core (`mmq_mma_<type>`) tile.
pub const MMA_ROWS: u32 = 64;
pub const MMA_TOKENS: u32 = 32;
/// The compute capability (times 10) the tensor-core kernels need: `mma.sync` on 8-bit integers
/// (m16n8k16 from sm_80, two m8n8k16 on sm_75).
pub const MMA_MIN_CC: u32 = 75;

/// `mmq_mma_<type>`: one block of four warps per tile of 64 rows x 32 tokens.
pub fn mmq_mma(rows: u32, ntok: u32) -> Launch {
    Launch::new(
        [rows.div_ceil(MMA_ROWS), ntok.div_ceil(MMA_TOKENS), 1],
        MV_LANES,
    )
}

/// `mma_probe`: one warp.
pub fn mma_probe() -> Launch {
    Launch::new([1, 1, 1], 32)
}

/// `mv_f32` / `mv_f16` / `mv_bf16`: as [`mmvq`].
pub fn mv(rows: u32, ntok: u32) -> Launch {
    mmvq(rows, ntok)
}

/// `rms_norm` of `n` rows: a block of 128 threads per row.
pub fn rms_norm(n: u32) -> Launch {
    Launch::new([n, 1, 1], 128)
}

/// `add_bias` of `n` rows of `cols`.
pub fn add_bias(cols: u32, n: u32) -> Launch {
    Launch::new([cols.div_ceil(256), n, 1], 256)
}

/// `add_inplace`, `copy_f32` and `silu_mul` over `len` values.
pub fn elementwise(len: u32) -> Launch {
    Launch::new([len.div_ceil(256), 1, 1], 256)
}

/// `rope` of `ntok` token rows: a block of 128 threads per token.
pub fn rope(ntok: u32) -> Launch {
    Launch::new([ntok, 1, 1], 128)
}

/// `get_rows_<type>` of `n` rows of `cols`.
pub fn get_rows(cols: u32, n: u32) -> Launch {
    Launch::new([cols.div_ceil(256), n, 1], 256)
}

/// `kv_store` of `n` rows of `kv_dim`.
pub fn kv_store(kv_dim: u32, n: u32) -> Launch {
    Launch::new([kv_dim.div_ceil(256), n, 1], 256)
}

/// `attention_paged` of `n_rows` query rows: a block of 128 threads per (row, KV head).
pub fn attention_paged(n_rows: u32, n_kv_heads: u32) -> Launch {
    Launch::new([n_rows, n_kv_heads, 1], 128)
}

/// Keys per split a model may use with the split-K attention. Any fixed value works (a row's
/// splits depend only on its own length), but results depend on it: keep one per model.
pub const ATTENTION_KEYS_PER_SPLIT: u32 = 512;

/// Splits of the longest row (`max_keys` keys) for `attention_paged_split`.
pub fn attention_splits(max_keys: u32, keys_per_split: u32) -> u32 {
    max_keys.div_ceil(keys_per_split).max(1)
}

/// `attention_paged_split`: a block of 128 threads per (row, KV head, split of the longest row).
pub fn attention_paged_split(
    n_rows: u32,
    n_kv_heads: u32,
    max_keys: u32,
    keys_per_split: u32,
) -> Launch {
    Launch::new(
        [
            n_rows,
            n_kv_heads,
            attention_splits(max_keys, keys_per_split),
        ],
        128,
    )
}

/// `attention_combine`: a block of 128 threads per (row, query head).
pub fn attention_combine(n_rows: u32, n_heads: u32) -> Launch {
    Launch::new([n_rows, n_heads, 1], 128)
}

/// Floats of `attention_paged_split`'s `part_o` and `part_ml` buffers.
pub fn attention_split_scratch(
    n_rows: usize,
    n_heads: usize,
    head_dim: usize,
    splits: usize,
) -> (usize, usize) {
    let per_head = n_rows * n_heads * splits;
    (per_head * head_dim, per_head * 2)
}

/// Whether `attention_paged` takes this head layout.
pub fn attention_supported(n_heads: u32, n_kv_heads: u32, head_dim: u32) -> bool {
    n_kv_heads > 0
        && n_heads.is_multiple_of(n_kv_heads)
        && n_heads / n_kv_heads <= ATTENTION_MAX_GROUP
        && head_dim > 0
        && head_dim <= ATTENTION_MAX_HEAD_DIM
}

/// `argmax_rows` and `topk_rows` of `n` rows: a block of 256 threads per row.
pub fn argmax_rows(n: u32) -> Launch {
    Launch::new([n, 1, 1], 256)
}

/// Values one `topk_rows` block takes (256 threads x 16 in registers).
pub const TOPK_SEG: u32 = 4096;

/// `topk_rows` of `n` rows of `len` values: a block of 256 threads per (row, segment of 4096).
pub fn topk_rows(len: u32, n: u32) -> Launch {
    Launch::new([n, topk_segments(len), 1], 256)
}

/// The segments `topk_rows` splits a row of `len` values into (its grid's y).
pub fn topk_segments(len: u32) -> u32 {
    len.div_ceil(TOPK_SEG).max(1)
}

/// `gather_bytes` of `n` rows of `row_bytes`.
pub fn gather_bytes(row_bytes: u32, n: u32) -> Launch {
    Launch::new([row_bytes.div_ceil(256), n, 1], 256)
}

/// `scatter_logits` of `n` rows: a block of 256 threads per row.
pub fn scatter_logits(n: u32) -> Launch {
    Launch::new([n, 1, 1], 256)
}

fn grid_dim(blocks: u64) -> u32 {
    u32::try_from(blocks).expect("grid dimension exceeds u32")
}

/// The kernel-name suffix of a weight type, `None` when no kernel reads it.
pub fn suffix(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::Q4_0 => "q4_0",
        DType::Q4_1 => "q4_1",
        DType::Q5_0 => "q5_0",
        DType::Q8_0 => "q8_0",
        DType::Q4K => "q4_k",
        DType::Q6K => "q6_k",
        _ => return None,
    })
}

/// Whether `dtype` goes through the 8-bit activation kernels (`mmvq_*`, `mmq_*`), as opposed to
/// the float ones (`mv_*`).
pub fn is_quantized(dtype: DType) -> bool {
    !matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// `mmvq_<type>`, `mmq_<type>` (quantized types), or `mv_<type>` (float types) for `dtype`.
pub fn matmul_kernel(dtype: DType, many_tokens: bool) -> Option<&'static str> {
    let s = suffix(dtype)?;
    named(&if !is_quantized(dtype) {
        format!("mv_{s}")
    } else if many_tokens {
        format!("mmq_{s}")
    } else {
        format!("mmvq_{s}")
    })
}

/// `mmq_mma_<type>`, the tensor-core product, for a quantized `dtype`.
pub fn mma_kernel(dtype: DType) -> Option<&'static str> {
    let s = suffix(dtype)?;
    is_quantized(dtype)
        .then(|| named(&format!("mmq_mma_{s}")))
        .flatten()
}

/// `get_rows_<type>` for `dtype`.
pub fn get_rows_kernel(dtype: DType) -> Option<&'static str> {
    named(&format!("get_rows_{}", suffix(dtype)?))
}

/// The kernel of [`KERNELS`] called `name` (its `'static` name: launches keep names, not copies).
fn named(name: &str) -> Option<&'static str> {
    KERNELS.iter().find(|&&k| k == name).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_defined_in_the_sources_once() {
        let all: String = SOURCES.iter().map(|s| s.text).collect();
        for k in KERNELS {
            // Defined directly or through a per-type macro.
            let direct = all.matches(&format!("\n    {k}(")).count();
            let by_macro = all.matches(&format!("_KERNEL({k},")).count();
            assert_eq!(direct + by_macro, 1, "{k}");
        }
    }

    #[test]
    fn program_source_keeps_line_numbers_and_drops_own_includes() {
        let p = program_source();
        assert!(!p.contains("#include \"common.cuh\""));
        assert!(p.contains("#line 1 \"mmvq.cu\""));
        let mmvq = SOURCES.iter().find(|s| s.name == "mmvq.cu").unwrap();
        let start = p.find("#line 1 \"mmvq.cu\"\n").unwrap() + "#line 1 \"mmvq.cu\"\n".len();
        assert_eq!(
            p[start..].lines().take(mmvq.text.lines().count()).count(),
            mmvq.text.lines().count()
        );
    }

    #[test]
    fn geometry_covers_the_shapes() {
        assert_eq!(mmvq(1536, 1).grid, [1536, 1, 1]);
        assert_eq!(mmvq(1536, 17).grid, [1536, 2, 1]);
        assert_eq!(mmq(1537, 64).grid, [385, 8, 1]);
        assert_eq!(mmq_mma(1537, 65).grid, [25, 3, 1]);
        assert_eq!(mma_kernel(DType::Q6K).unwrap(), "mmq_mma_q6_k");
        assert!(mma_kernel(DType::F16).is_none());
        assert_eq!(quantize_q8_1(1536, 3).grid, [18, 1, 1]);
        assert_eq!(elementwise(0).grid, [1, 1, 1]);
        assert!(attention_supported(12, 2, 128));
        assert!(!attention_supported(12, 1, 128));
        assert_eq!(matmul_kernel(DType::Q4K, true).unwrap(), "mmq_q4_k");
        assert_eq!(matmul_kernel(DType::BF16, true).unwrap(), "mv_bf16");
        assert!(matmul_kernel(DType::Q5K, false).is_none());
        // Every type the shipped models use has its products and row gather among KERNELS.
        use DType::*;
        for d in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4K, Q6K] {
            assert!(
                matmul_kernel(d, false).is_some() && matmul_kernel(d, true).is_some(),
                "{d:?}"
            );
            assert!(get_rows_kernel(d).is_some(), "{d:?}");
            assert_eq!(mma_kernel(d).is_some(), is_quantized(d), "{d:?}");
        }
    }
}
