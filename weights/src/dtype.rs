//! Tensor element types: the GGML block formats and the plain float types.

/// The element type of a stored tensor. Block types store `block_len()` values in `block_bytes()` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// Values in one K-quant super-block.
pub const QK_K: usize = 256;

/// How a matrix's blocks are ordered in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Row after row, each row its blocks in order (every GGUF writer's layout).
    #[default]
    Rows,
    /// Q4_K / Q6_K matrices written by `cascade repack`: groups of eight rows, and within a group
    /// one record per super-block column holding that column's super-blocks of all eight rows
    /// with their fields transposed to one row per 32-bit lane (the order the AVX-512 kernels
    /// use). The same bytes as [`Layout::Rows`], reordered; the rows must be a multiple of 8.
    Interleaved8,
}

/// GGUF type ids of the interleaved layouts: outside GGML's range, so that other readers refuse
/// the tensors instead of misreading them.
const INTERLEAVED8_BASE: u32 = 0x4341_0000;

impl Layout {
    /// Rows per group of this layout.
    pub fn group_rows(self) -> usize {
        match self {
            Layout::Rows => 1,
            Layout::Interleaved8 => 8,
        }
    }

    /// Whether `dtype` can be stored in this layout.
    pub fn supports(self, dtype: DType) -> bool {
        match self {
            Layout::Rows => true,
            Layout::Interleaved8 => matches!(dtype, DType::Q4K | DType::Q6K),
        }
    }
}

/// The GGUF type id of `dtype` stored in `layout` (`layout` must support `dtype`).
pub fn stored_id(dtype: DType, layout: Layout) -> u32 {
    match layout {
        Layout::Rows => dtype.ggml_id(),
        Layout::Interleaved8 => INTERLEAVED8_BASE | dtype.ggml_id(),
    }
}

/// The type and layout of a stored GGUF type id, or `Err(name)` as [`DType::from_ggml_id`].
pub fn from_stored_id(id: u32) -> Result<(DType, Layout), String> {
    if id & 0xffff_0000 == INTERLEAVED8_BASE {
        let base = id & 0xffff;
        return match DType::from_ggml_id(base) {
            Ok(t) if Layout::Interleaved8.supports(t) => Ok((t, Layout::Interleaved8)),
            _ => Err(format!(
                "interleaved type {id:#x} (no such interleaved type)"
            )),
        };
    }
    DType::from_ggml_id(id).map(|t| (t, Layout::Rows))
}

impl DType {
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2K,
        DType::Q3K,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// The GGML type id of this type, as stored in a GGUF tensor info.
    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q2K => 10,
            DType::Q3K => 11,
            DType::Q4K => 12,
            DType::Q5K => 13,
            DType::Q6K => 14,
            DType::BF16 => 30,
        }
    }

    /// The type for a GGML type id, or `Err(name)` with the id's GGML name when it is not supported.
    pub fn from_ggml_id(id: u32) -> Result<DType, String> {
        Ok(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            10 => DType::Q2K,
            11 => DType::Q3K,
            12 => DType::Q4K,
            13 => DType::Q5K,
            14 => DType::Q6K,
            30 => DType::BF16,
            other => {
                let name = match other {
                    9 => "Q8_1",
                    15 => "Q8_K",
                    16..=23 | 29 => "an IQ type",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => "unknown",
                };
                return Err(format!("{name} (ggml type {other})"));
            }
        })
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => 32,
            DType::Q2K | DType::Q3K | DType::Q4K | DType::Q5K | DType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q2K => 84,
            DType::Q3K => 110,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
        }
    }

    /// Bytes taken by `n` values (n must be a multiple of the block length).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_len() * self.block_bytes()
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q8_0 => "Q8_0",
            DType::Q2K => "Q2_K",
            DType::Q3K => "Q3_K",
            DType::Q4K => "Q4_K",
            DType::Q5K => "Q5_K",
            DType::Q6K => "Q6_K",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in DType::ALL {
            assert_eq!(DType::from_ggml_id(t.ggml_id()), Ok(t));
        }
        assert!(DType::from_ggml_id(9).unwrap_err().contains("Q8_1"));
    }

    #[test]
    fn stored_ids_round_trip() {
        for t in DType::ALL {
            for l in [Layout::Rows, Layout::Interleaved8] {
                if l.supports(t) {
                    assert_eq!(from_stored_id(stored_id(t, l)), Ok((t, l)));
                }
            }
        }
        assert!(from_stored_id(INTERLEAVED8_BASE | 8).is_err());
        assert_eq!(
            from_stored_id(DType::Q6K.ggml_id()),
            Ok((DType::Q6K, Layout::Rows))
        );
    }
}
