//! `cascade repack`: a GGUF file rewritten with its Q4_K and Q6_K weight matrices in the
//! interleaved layout ([`Layout::Interleaved8`]) that the 8-row integer kernels read without
//! transposing. Everything else (metadata, other tensors, their order) is copied as it is; the
//! products, and so the logits, are bitwise those of the source file. Done once, offline; the
//! result is mapped like any model file.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use cascade_kernels::interleave::{interleave8, GROUP};
use cascade_weights::{GgufHeader, GgufWriter, Layout, TensorInfo, TensorView, Value, WeightStore};

use crate::error::{EngineError, Result};

/// Metadata key marking a repacked file (value: the layout's name).
pub const REPACKED_KEY: &str = "cascade.repacked";

/// What a repack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepackSummary {
    /// Matrices written interleaved.
    pub interleaved: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// Bytes of the interleaved matrices.
    pub interleaved_bytes: u64,
}

/// Whether the tensor `name` of `dtype`, GGML dims `dims`, stored in `layout`, is interleaved: a
/// Q4_K / Q6_K matrix of a whole number of row groups, other than the embedding table (read one
/// row at a time, by token id).
fn eligible(name: &str, dtype: cascade_weights::DType, dims: &[u64], layout: Layout) -> bool {
    layout == Layout::Rows
        && Layout::Interleaved8.supports(dtype)
        && dims.len() == 2
        && dims[1].is_multiple_of(GROUP as u64)
        && name != "token_embd.weight"
}

/// Whether `cascade repack` would interleave this tensor of a parsed header.
pub fn would_interleave_info(t: &TensorInfo) -> bool {
    eligible(&t.name, t.dtype, &t.dims, t.layout)
}

/// Whether `cascade repack` would interleave this (row-major) tensor.
pub fn would_interleave(t: &TensorView) -> bool {
    let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
    eligible(&t.name, t.dtype, &dims, t.layout)
}

/// Writes `src` (a GGUF file) to `dst` with its eligible matrices interleaved. The output is
/// written next to `dst` under a temporary name and renamed into place, so a failure never
/// leaves a partial file at `dst`.
pub fn repack_gguf(src: &Path, dst: &Path) -> Result<RepackSummary> {
    repack_gguf_with(src, dst, &[])
}

/// [`repack_gguf`] adding `extra` metadata entries to the output.
pub fn repack_gguf_with(src: &Path, dst: &Path, extra: &[(&str, Value)]) -> Result<RepackSummary> {
    let same = match (src.canonicalize(), dst.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(EngineError::InvalidParam {
            name: "out",
            reason: format!("{} is the source file; pick another path", dst.display()),
        });
    }
    if src.is_dir() {
        return Err(EngineError::InvalidParam {
            name: "model",
            reason: format!("{} is a folder; repack takes a GGUF file", src.display()),
        });
    }
    let store = WeightStore::new();
    let file = store.map(src)?;
    let header = GgufHeader::parse(src, file.bytes())?;
    if header.metadata.contains_key(REPACKED_KEY) {
        return Err(EngineError::InvalidParam {
            name: "model",
            reason: format!("{} is already repacked", src.display()),
        });
    }
    // Which tensors are interleaved, decided once.
    let plan: Vec<bool> = header
        .tensors
        .iter()
        .map(|t| eligible(&t.name, t.dtype, &t.dims, t.layout))
        .collect();
    if !plan.contains(&true) {
        return Err(EngineError::InvalidParam {
            name: "model",
            reason: format!(
                "{} has no Q4_K or Q6_K matrix with rows a multiple of {GROUP}: nothing to \
                 interleave (the other types' kernels read the file as it is)",
                src.display()
            ),
        });
    }
    let mut w = GgufWriter::new();
    for (k, v) in &header.metadata {
        // The writer aligns to the default; a source's own alignment does not carry over.
        if k != "general.alignment" {
            w.meta(k, v.clone());
        }
    }
    w.meta(REPACKED_KEY, Value::String("interleaved8".into()));
    for (k, v) in extra {
        w.meta(k, v.clone());
    }
    // Every tensor's bytes are given as the file is written, one at a time: the source's
    // mapping as it is, or an interleaved copy of one matrix.
    let mut summary = RepackSummary::default();
    for (t, &il) in header.tensors.iter().zip(&plan) {
        if il {
            w.tensor_later(&t.name, &t.dims, t.dtype, Layout::Interleaved8);
            summary.interleaved += 1;
            summary.interleaved_bytes += t.n_bytes;
        } else {
            w.tensor_later(&t.name, &t.dims, t.dtype, t.layout);
            summary.copied += 1;
        }
    }
    let bytes_of = |i: usize| -> std::io::Result<Cow<'_, [u8]>> {
        let t = &header.tensors[i];
        let bytes = &file.bytes()[t.offset as usize..(t.offset + t.n_bytes) as usize];
        if plan[i] {
            let (rows, cols) = (t.dims[1] as usize, t.dims[0] as usize);
            interleave8(t.dtype, bytes, rows, cols)
                .map(Cow::Owned)
                .map_err(std::io::Error::other)
        } else {
            Ok(Cow::Borrowed(bytes))
        }
    };
    let tmp = temp_path(dst);
    let written = match w.write_with(&tmp, bytes_of) {
        Ok(()) => std::fs::rename(&tmp, dst),
        Err(cascade_weights::WeightsError::Io { source, .. }) => Err(source),
        Err(e) => Err(std::io::Error::other(e)),
    };
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::Write {
            path: dst.to_path_buf(),
            source,
        });
    }
    Ok(summary)
}

/// A temporary name beside `dst`, unique to this process and call (two writers of one file
/// never share one).
fn temp_path(dst: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    dst.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{write, FixtureSpec};
    use crate::model::{Logits, Model};
    use cascade_weights::{DType, OpenOptions};

    fn logits_of(path: &Path, tokens: &[u32]) -> Vec<f32> {
        let store = WeightStore::new();
        let m = Model::load(&store, path, &OpenOptions::default()).unwrap();
        let mut cache = m.new_cache(64).unwrap();
        // A prefill, then a 5-token "verification" on top of it.
        m.forward(&tokens[..7], &mut cache, Logits::All).unwrap();
        let mut out = m.forward(&tokens[7..], &mut cache, Logits::All).unwrap();
        out.extend(m.forward(&tokens[..1], &mut cache, Logits::Last).unwrap());
        out
    }

    #[test]
    fn a_repacked_model_gives_bitwise_the_same_logits() {
        let dir = tempfile::tempdir().unwrap();
        for (dtype, embd) in [(DType::Q4K, DType::Q6K), (DType::Q6K, DType::Q4K)] {
            // 256 + 6 merges + 3 specials + 15 padding = 280 rows: the output matrix is a whole
            // number of groups, and is interleaved too.
            let spec = FixtureSpec {
                hidden: 256,
                ffn: 512,
                dtype,
                embd_dtype: embd,
                pad_vocab: 15,
                ..FixtureSpec::default()
            };
            let src = dir.path().join(format!("{dtype}.gguf"));
            let dst = dir.path().join(format!("{dtype}-r8.gguf"));
            write(&spec, &src).unwrap();
            let s = repack_gguf(&src, &dst).unwrap();
            // Seven matrices per layer and the output matrix.
            assert_eq!(s.interleaved, 2 * 7 + 1, "{dtype}");
            let store = WeightStore::new();
            let files = store.open_model(&dst, &OpenOptions::default()).unwrap();
            let layout = |name: &str| files.tensor(name).unwrap().layout;
            assert_eq!(layout("blk.1.ffn_down.weight"), Layout::Interleaved8);
            assert_eq!(layout("output.weight"), Layout::Interleaved8);
            assert_eq!(layout("token_embd.weight"), Layout::Rows);
            let tokens = [1u32, 40, 7, 99, 3, 17, 250, 5, 6, 120, 33, 8];
            let (a, b) = (logits_of(&src, &tokens), logits_of(&dst, &tokens));
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{dtype}"
            );
            // A repacked file is not repacked again, and a file never overwrites itself.
            assert!(repack_gguf(&dst, &dir.path().join("again.gguf")).is_err());
            assert!(repack_gguf(&src, &src).is_err());
        }
    }

    #[test]
    fn nothing_to_interleave_and_unwritable_outputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let q8 = dir.path().join("q8.gguf");
        write(&FixtureSpec::default(), &q8).unwrap();
        let err = repack_gguf(&q8, &dir.path().join("o.gguf")).unwrap_err();
        assert!(err.to_string().contains("nothing to interleave"), "{err}");
        assert!(repack_gguf(dir.path(), &dir.path().join("o.gguf")).is_err());
        let spec = FixtureSpec {
            hidden: 256,
            ffn: 512,
            dtype: DType::Q4K,
            ..FixtureSpec::default()
        };
        let src = dir.path().join("k.gguf");
        write(&spec, &src).unwrap();
        let bad = dir.path().join("no-such-dir").join("o.gguf");
        let err = repack_gguf(&src, &bad).unwrap_err();
        assert!(err.to_string().starts_with("cannot write"), "{err}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }

    #[test]
    fn a_missing_source_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.gguf");
        let err = repack_gguf(&missing, &dir.path().join("out.gguf")).unwrap_err();
        assert!(err.to_string().contains("nope.gguf"), "{err}");
        assert!(!dir.path().join("out.gguf").exists());
    }
}
