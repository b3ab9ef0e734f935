//! The weight store: every model file is memory-mapped once; tensors are typed views into the
//! mappings, never copies. Draft and target are opened through one store.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use crate::config::ModelConfig;
use crate::dtype::{DType, Layout};
use crate::error::{Result, WeightsError};
use crate::gguf::{GgufHeader, Value};
use crate::safetensors_src;
use crate::tokenizer::Tokenizer;

/// One file, mapped read-only for the life of every view into it.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

impl MappedFile {
    fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => WeightsError::NotFound {
                path: path.to_path_buf(),
            },
            _ => WeightsError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        // SAFETY: a read-only *shared* mapping of the file (other processes mapping it share the
        // pages), so its bytes change if the file is modified in place: the slices handed out stay
        // valid only while nobody truncates or rewrites the file. cascade never writes a model in
        // place (its writers write a temporary name and rename over, which leaves this mapping on
        // the old inode), and the README tells users not to modify a model file while it is used.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            mmap,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }
}

/// A tensor: name, type, shape and the byte range it occupies in its file's mapping.
#[derive(Debug, Clone)]
pub struct TensorView {
    pub name: String,
    pub dtype: DType,
    /// Block order of a matrix (interleaved only in files written by `cascade repack`).
    pub layout: Layout,
    /// Row-major, outermost dimension first (a weight matrix is `[out_features, in_features]`).
    pub shape: Vec<usize>,
    file: Arc<MappedFile>,
    start: usize,
    len: usize,
}

impl TensorView {
    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.start..self.start + self.len]
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the innermost dimension.
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }

    /// Product of all dimensions but the innermost.
    pub fn rows(&self) -> usize {
        self.n_elements() / self.cols().max(1)
    }

    /// Bytes of one row (the innermost dimension).
    pub fn row_bytes(&self) -> usize {
        self.dtype.bytes_for(self.cols())
    }

    pub fn file_path(&self) -> &Path {
        self.file.path()
    }

    /// Byte range inside the file.
    pub fn byte_range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// Where a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf { version: u32 },
    Safetensors,
}

/// A model opened from the store: its typed config, tokenizer and tensor views.
#[derive(Debug)]
pub struct ModelFiles {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    /// GGUF metadata (empty for safetensors folders), for `inspect`. Arrays of more than 256
    /// values (the vocabulary) are replaced by their length.
    pub metadata: BTreeMap<String, Value>,
    tensors: HashMap<String, TensorView>,
}

impl ModelFiles {
    /// A tensor by its canonical (GGUF) name.
    pub fn tensor(&self, name: &str) -> Result<&TensorView> {
        self.tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_string(),
            })
    }

    pub fn get(&self, name: &str) -> Option<&TensorView> {
        self.tensors.get(name)
    }

    pub fn tensors(&self) -> impl Iterator<Item = &TensorView> {
        self.tensors.values()
    }

    /// Bytes of all tensors.
    pub fn weight_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.len).sum()
    }
}

/// Reads `path` whole unless it is longer than `limit` bytes (a refusal names `what`).
pub(crate) fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => WeightsError::NotFound {
            path: path.to_path_buf(),
        },
        _ => WeightsError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > limit {
        return Err(WeightsError::Limit {
            what,
            value: len,
            limit,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Options for opening a model.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Use this `tokenizer.json` instead of the model's own tokenizer.
    pub tokenizer_json: Option<PathBuf>,
}

/// Holds every mapped file; opening a path twice reuses its mapping.
#[derive(Debug, Default)]
pub struct WeightStore {
    files: Mutex<HashMap<PathBuf, Arc<MappedFile>>>,
}

impl WeightStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `path` (once per store) and returns the mapping.
    pub fn map(&self, path: &Path) -> Result<Arc<MappedFile>> {
        let key = path.canonicalize().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => WeightsError::NotFound {
                path: path.to_path_buf(),
            },
            _ => WeightsError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&key) {
            return Ok(f.clone());
        }
        let f = Arc::new(MappedFile::open(path)?);
        files.insert(key, f.clone());
        Ok(f)
    }

    /// Number of distinct files mapped.
    pub fn mapped_files(&self) -> usize {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Total bytes of all mapped files.
    pub fn mapped_bytes(&self) -> usize {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.values().map(|f| f.bytes().len()).sum()
    }

    /// Opens a model: a `.gguf` file or a Hugging Face folder (config.json + safetensors).
    pub fn open_model(&self, path: &Path, opts: &OpenOptions) -> Result<ModelFiles> {
        if !path.exists() {
            return Err(WeightsError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let mut model = if path.is_dir() {
            safetensors_src::open_folder(self, path)?
        } else {
            self.open_gguf(path)?
        };
        if let Some(tj) = &opts.tokenizer_json {
            model.tokenizer = Tokenizer::from_json_file(tj, Some(&model.tokenizer))?;
        }
        Ok(model)
    }

    fn open_gguf(&self, path: &Path) -> Result<ModelFiles> {
        let file = self.map(path)?;
        let header = GgufHeader::parse(path, file.bytes())?;
        let mut tensors = HashMap::with_capacity(header.tensors.len());
        for info in &header.tensors {
            let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
            tensors.insert(
                info.name.clone(),
                TensorView {
                    name: info.name.clone(),
                    dtype: info.dtype,
                    layout: info.layout,
                    shape,
                    file: file.clone(),
                    start: info.offset as usize,
                    len: info.n_bytes as usize,
                },
            );
        }
        let config = ModelConfig::from_gguf(&header.metadata, &tensors)?;
        let tokenizer = Tokenizer::from_gguf(&header.metadata)?;
        // The tokenizer now owns the vocabulary; keep only a summary of the large arrays.
        let mut metadata = header.metadata;
        for v in metadata.values_mut() {
            if let Value::Array(a) = v {
                if a.len() > 256 {
                    *v = Value::U64(a.len() as u64);
                }
            }
        }
        Ok(ModelFiles {
            path: path.to_path_buf(),
            format: ModelFormat::Gguf {
                version: header.version,
            },
            config,
            tokenizer,
            metadata,
            tensors,
        })
    }

    /// Builds a view over `file[start..start+len]`; used by the safetensors loader.
    pub(crate) fn view(
        file: &Arc<MappedFile>,
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        start: usize,
        len: usize,
    ) -> TensorView {
        TensorView {
            name,
            dtype,
            layout: Layout::Rows,
            shape,
            file: file.clone(),
            start,
            len,
        }
    }

    pub(crate) fn assemble(
        path: &Path,
        config: ModelConfig,
        tokenizer: Tokenizer,
        tensors: HashMap<String, TensorView>,
    ) -> ModelFiles {
        ModelFiles {
            path: path.to_path_buf(),
            format: ModelFormat::Safetensors,
            config,
            tokenizer,
            metadata: BTreeMap::new(),
            tensors,
        }
    }
}
