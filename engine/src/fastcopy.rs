//! The fast layout without asking: a GGUF whose Q4_K / Q6_K matrices the CPU kernels read faster
//! interleaved is repacked once into a cache folder (beside the model by default), and its copy
//! is mapped from then on. The copy's name carries the source's size and modification time, and
//! its metadata the same key, so a changed source is never served stale. It is written under a
//! temporary name and renamed (two processes repacking one file both write whole files; the last
//! rename wins and neither reads a partial one). A copy that does not parse or does not match
//! its key is rebuilt; a folder that cannot be written (or a full disk) leaves the source in use
//! with a warning.

use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use cascade_weights::{GgufHeader, Value, WeightStore};

use crate::repack::{repack_gguf_with, would_interleave_info, REPACKED_KEY};

/// Metadata key of a cached copy: the source's size and modification time it was made from.
pub const SOURCE_KEY: &str = "cascade.repacked.source";

/// Whether and where models are repacked at load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RepackPolicy {
    /// Into `.cascade-repacked/` beside the model, or `$CASCADE_REPACK_DIR` when set.
    #[default]
    Auto,
    /// Into this folder.
    In(PathBuf),
    /// Map the source as it is.
    Off,
}

impl RepackPolicy {
    fn dir(&self, src: &Path) -> Option<PathBuf> {
        match self {
            RepackPolicy::Off => None,
            RepackPolicy::In(d) => Some(d.clone()),
            RepackPolicy::Auto => Some(match std::env::var_os("CASCADE_REPACK_DIR") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => src
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(".cascade-repacked"),
            }),
        }
    }
}

/// The file to map for `src`: its repacked copy (made now if missing or stale), or `src` itself
/// when it is not a GGUF file with matrices to interleave, the policy is off, or the copy cannot
/// be written.
pub fn fast_path(src: &Path, policy: &RepackPolicy) -> PathBuf {
    match try_fast_path(src, policy) {
        Ok(Some(p)) => p,
        Ok(None) => src.to_path_buf(),
        Err(why) => {
            tracing::warn!("{}: using the file as it is: {why}", src.display());
            src.to_path_buf()
        }
    }
}

fn try_fast_path(src: &Path, policy: &RepackPolicy) -> Result<Option<PathBuf>, String> {
    let Some(dir) = policy.dir(src) else {
        return Ok(None);
    };
    if !src.is_file() {
        return Ok(None);
    }
    let meta = std::fs::metadata(src).map_err(|e| e.to_string())?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}:{mtime}", meta.len());
    {
        // Not a GGUF, already repacked, or nothing to interleave: the source it is (a file that
        // does not parse is left to the loader, which names the problem).
        let store = WeightStore::new();
        let file = store.map(src).map_err(|e| e.to_string())?;
        let Ok(h) = GgufHeader::parse(src, file.bytes()) else {
            return Ok(None);
        };
        if h.metadata.contains_key(REPACKED_KEY) || !h.tensors.iter().any(would_interleave_info) {
            return Ok(None);
        }
    }
    let stem = src.file_stem().unwrap_or_default().to_string_lossy();
    let dst = dir.join(format!("{stem}.{}-{mtime}.r8.gguf", meta.len()));
    if dst.exists() {
        if valid_copy(&dst, &key) {
            return Ok(Some(dst));
        }
        tracing::warn!(
            "{}: the cached copy is damaged; rebuilding it",
            dst.display()
        );
        let _ = std::fs::remove_file(&dst);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let t0 = Instant::now();
    let extra = [(SOURCE_KEY, Value::String(key))];
    let s = repack_gguf_with(src, &dst, &extra).map_err(|e| e.to_string())?;
    tracing::info!(
        "{}: {} matrices repacked once into {} ({:.1} s); later loads map it",
        src.display(),
        s.interleaved,
        dst.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Some(dst))
}

/// Whether `path` parses (every tensor inside the file) and was made from the source `key`.
fn valid_copy(path: &Path, key: &str) -> bool {
    let store = WeightStore::new();
    let Ok(file) = store.map(path) else {
        return false;
    };
    match GgufHeader::parse(path, file.bytes()) {
        Ok(h) => matches!(h.metadata.get(SOURCE_KEY), Some(Value::String(k)) if k == key),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{write, FixtureSpec};
    use crate::model::{Logits, Model};
    use cascade_weights::{DType, Layout, OpenOptions};

    fn spec() -> FixtureSpec {
        FixtureSpec {
            hidden: 256,
            ffn: 512,
            dtype: DType::Q4K,
            embd_dtype: DType::Q6K,
            pad_vocab: 15,
            ..FixtureSpec::default()
        }
    }

    fn logits(path: &Path) -> Vec<u32> {
        let m = Model::load(&WeightStore::new(), path, &OpenOptions::default()).unwrap();
        let mut cache = m.new_cache(16).unwrap();
        let out = m
            .forward(&[1, 40, 7, 99, 3], &mut cache, Logits::All)
            .unwrap();
        out.iter().map(|v| v.to_bits()).collect()
    }

    fn layout(path: &Path) -> Layout {
        let files = WeightStore::new()
            .open_model(path, &OpenOptions::default())
            .unwrap();
        files.tensor("blk.0.ffn_down.weight").unwrap().layout
    }

    #[test]
    fn the_copy_is_made_once_reused_and_rebuilt_when_damaged_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.gguf");
        write(&spec(), &src).unwrap();
        let cache = RepackPolicy::In(dir.path().join("cache"));
        let p = fast_path(&src, &cache);
        assert_ne!(p, src);
        assert_eq!(layout(&p), Layout::Interleaved8);
        assert_eq!(logits(&p), logits(&src), "bitwise the source's logits");
        let made = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(fast_path(&src, &cache), p, "the same copy the second time");
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), made);
        // A truncated copy is detected and rebuilt.
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert_eq!(fast_path(&src, &cache), p);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        assert_eq!(logits(&p), logits(&src));
        // A changed source gets a new copy.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&FixtureSpec { seed: 77, ..spec() }, &src).unwrap();
        let q = fast_path(&src, &cache);
        assert_ne!(q, p);
        assert_eq!(logits(&q), logits(&src));
        // Off, a folder that cannot be created, a file with nothing to interleave: the source.
        assert_eq!(fast_path(&src, &RepackPolicy::Off), src);
        let blocked = RepackPolicy::In(src.join("sub"));
        assert_eq!(fast_path(&src, &blocked), src);
        let q8 = dir.path().join("q8.gguf");
        write(&FixtureSpec::default(), &q8).unwrap();
        assert_eq!(fast_path(&q8, &cache), q8);
        assert_eq!(fast_path(&q, &cache), q, "a repacked file is used as it is");
    }

    #[test]
    fn two_repackers_of_one_file_both_end_with_a_whole_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.gguf");
        write(&spec(), &src).unwrap();
        let cache = RepackPolicy::In(dir.path().join("cache"));
        let want = logits(&src);
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let h: Vec<_> = (0..3)
                .map(|_| s.spawn(|| fast_path(&src, &cache)))
                .collect();
            h.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for p in &paths {
            assert_ne!(p, &src);
            assert_eq!(logits(p), want);
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
