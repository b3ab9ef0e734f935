//! Compiling the kernels with NVRTC, at run time, for the GPU at hand.
//!
//! NVRTC and the CUDA headers come from the pip wheels `nvidia-cuda-nvrtc-cu12` and
//! `nvidia-cuda-runtime-cu12` (`scripts/setup-cuda` installs them into `~/.cache/cascade/cuda`)
//! or a toolkit; [`find_cuda`] looks, in order, in `$CASCADE_CUDA_HOME`, `~/.cache/cascade/cuda`,
//! python3's site-packages and `/usr/local/cuda`. The library found is loaded by its full path
//! and kept loaded for the life of the process, so that cudarc's own `dlopen` by soname
//! (`libnvrtc.so.12`) finds that same library already in the process.
//!
//! [`compile`] builds every kernel for one architecture (`sm_XY`): PTX, the CUBIN, and the
//! program log with ptxas' per-kernel resource lines (registers, spills, shared memory), parsed
//! into [`KernelResources`]. Results are cached on disk under `~/.cache/cascade/cuda-kernels/`,
//! keyed by a hash of the sources, the options, the architecture and the NVRTC version.

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result as nvrtc, sys};

use crate::error::{GpuError, Result};
use crate::kernels;

/// Where NVRTC and the CUDA headers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaPaths {
    /// `libnvrtc.so.12` (or a toolkit's `libnvrtc.so`).
    pub nvrtc: PathBuf,
    /// The directory holding `cuda_fp16.h`.
    pub include: PathBuf,
}

/// Resources ptxas reports for one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// Static shared memory, bytes.
    pub shared: u32,
    /// Stack frame, bytes.
    pub stack: u32,
}

/// Every kernel compiled for one architecture.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Compute capability as `major * 10 + minor` (80 for sm_80).
    pub arch: u32,
    pub ptx: String,
    /// The CUBIN for `sm_<arch>` (loadable on exactly that architecture family).
    pub cubin: Vec<u8>,
    /// NVRTC's program log (warnings and ptxas' resource report).
    pub log: String,
    pub resources: Vec<KernelResources>,
    /// Whether this came from the disk cache.
    pub cached: bool,
}

/// Options every compilation uses (the architecture is added per call). `--fmad=false`: no
/// multiply-add contraction, so each float operation is the one the source spells (the host
/// shim compiles with `-ffp-contract=off` for the same reason).
pub const OPTIONS: &[&str] = &[
    "--std=c++17",
    "-default-device",
    "--fmad=false",
    "--ptxas-options=-v",
];

/// Looks for NVRTC and the headers (see the module docs for the order).
pub fn find_cuda() -> Result<CudaPaths> {
    let roots = candidate_roots();
    let nvrtc = roots.iter().find_map(|r| nvrtc_in(r));
    let include = roots.iter().find_map(|r| include_in(r));
    match (nvrtc, include) {
        (Some(nvrtc), Some(include)) => Ok(CudaPaths { nvrtc, include }),
        (nvrtc, include) => {
            let looked: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            let missing = match (nvrtc, include) {
                (None, None) => "libnvrtc.so.12 and cuda_fp16.h",
                (None, Some(_)) => "libnvrtc.so.12",
                _ => "cuda_fp16.h",
            };
            Err(GpuError::NvrtcMissing(format!(
                "{missing} not found (looked in {}); run scripts/setup-cuda or set CASCADE_CUDA_HOME",
                looked.join(", ")
            )))
        }
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn candidate_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(p) = std::env::var_os("CASCADE_CUDA_HOME") {
        roots.push(PathBuf::from(p));
    }
    if let Some(h) = home() {
        roots.push(h.join(".cache/cascade/cuda"));
    }
    roots.extend(python_site_packages());
    roots.push(PathBuf::from("/usr/local/cuda"));
    roots
}

/// python3's site-packages directories (where `pip install` puts the `nvidia` wheels); none
/// when there is no python3.
fn python_site_packages() -> Vec<PathBuf> {
    let script = "import site, sys\n\
        dirs = list(getattr(site, 'getsitepackages', lambda: [])())\n\
        dirs.append(site.getusersitepackages())\n\
        print('\\n'.join(d for d in dirs if d))";
    let Ok(out) = std::process::Command::new("python3")
        .args(["-c", script])
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_dir())
        .collect()
}

fn nvrtc_in(root: &Path) -> Option<PathBuf> {
    [
        "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
        "lib64/libnvrtc.so.12",
        "lib64/libnvrtc.so",
        "lib/libnvrtc.so.12",
        "lib/libnvrtc.so",
        "targets/x86_64-linux/lib/libnvrtc.so.12",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.is_file())
}

fn include_in(root: &Path) -> Option<PathBuf> {
    [
        "nvidia/cuda_runtime/include",
        "include",
        "targets/x86_64-linux/include",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.join("cuda_fp16.h").is_file())
}

/// The library found by [`find_cuda`], loaded for the life of the process.
struct Loaded {
    paths: CudaPaths,
    _lib: libloading::Library,
}

static LOADED: OnceLock<std::result::Result<Loaded, String>> = OnceLock::new();

/// Finds NVRTC and loads it (once per process): after this, cudarc's NVRTC calls use it.
/// An error (not a panic, which is what cudarc does on a missing library) when it is missing.
pub fn load() -> Result<&'static CudaPaths> {
    let loaded = LOADED.get_or_init(|| {
        let paths = find_cuda().map_err(|e| match e {
            GpuError::NvrtcMissing(m) => m,
            other => other.to_string(),
        })?;
        // SAFETY: loading libnvrtc runs its initializers, which have no preconditions; the
        // library stays loaded (owned by this static) for the rest of the process, so symbols
        // cudarc resolves from it stay valid.
        let lib = unsafe { libloading::Library::new(&paths.nvrtc) }
            .map_err(|e| format!("cannot load {}: {e}", paths.nvrtc.display()))?;
        // SAFETY: is_culib_present only tries to dlopen candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(format!(
                "{} is loaded but cudarc does not find it by soname",
                paths.nvrtc.display()
            ));
        }
        Ok(Loaded { paths, _lib: lib })
    });
    match loaded {
        Ok(l) => Ok(&l.paths),
        Err(e) => Err(GpuError::NvrtcMissing(e.clone())),
    }
}

/// NVRTC's version (major, minor).
pub fn version() -> Result<(i32, i32)> {
    load()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (above); the two out-pointers are valid for writes.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| nvrtc_err("nvrtcVersion", e))?;
    Ok((major, minor))
}

fn nvrtc_err(what: &str, e: nvrtc::NvrtcError) -> GpuError {
    GpuError::Nvrtc {
        arch: 0,
        log: format!("{what}: {e}"),
    }
}

/// Compiles every kernel for `sm_<arch>` (e.g. 80, 90), through the disk cache.
pub fn compile(arch: u32) -> Result<Compiled> {
    let paths = load()?;
    let version = version()?;
    let source = kernels::program_source();
    let options = options(arch, &paths.include);
    // The library's size tells patch releases of one NVRTC version apart.
    let lib_len = std::fs::metadata(&paths.nvrtc)
        .map(|m| m.len())
        .unwrap_or(0);
    let key = cache_key(&source, &options, arch, version, lib_len);
    let path = cache_dir().map(|d| d.join(format!("{key:016x}-sm_{arch}.bin")));
    if let Some(p) = &path {
        if let Some(mut c) = read_cache(p, arch) {
            c.cached = true;
            return Ok(c);
        }
    }
    let compiled = compile_uncached_with(&source, &options, arch)?;
    if let Some(p) = &path {
        // A cache that cannot be written is only slower next time.
        if let Err(e) = write_cache(p, &compiled) {
            tracing::debug!("kernel cache not written to {}: {e}", p.display());
        }
    }
    Ok(compiled)
}

/// Compiles every kernel for `sm_<arch>` without the cache.
pub fn compile_uncached(arch: u32) -> Result<Compiled> {
    let paths = load()?;
    let source = kernels::program_source();
    compile_uncached_with(&source, &options(arch, &paths.include), arch)
}

fn options(arch: u32, include: &Path) -> Vec<String> {
    let mut o: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    o.push(format!("--gpu-architecture=sm_{arch}"));
    o.push(format!("--include-path={}", include.display()));
    o
}

fn compile_uncached_with(source: &str, options: &[String], arch: u32) -> Result<Compiled> {
    let err = |log: String| GpuError::Nvrtc { arch, log };
    let src = CString::new(source).map_err(|_| err("source holds a NUL byte".into()))?;
    let name = CString::new("cascade_kernels.cu").expect("no NUL");
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| err(e.to_string()))?;
    // SAFETY: `prog` was just created and is destroyed once, below; `src` and `name` outlive it.
    let out = unsafe { compile_program(prog, options, arch) };
    // SAFETY: as above; nothing uses `prog` after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` must be a live program from `nvrtc::create_program`.
unsafe fn compile_program(
    prog: sys::nvrtcProgram,
    options: &[String],
    arch: u32,
) -> Result<Compiled> {
    let err = |log: String| GpuError::Nvrtc { arch, log };
    // SAFETY: the caller keeps `prog` alive; cudarc passes the options as C strings it owns
    // for the call.
    let compiled = unsafe { nvrtc::compile_program(prog, options) };
    // SAFETY: `prog` is alive; cudarc sizes the log's buffer by its size query.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(err(format!("{e}\n{log}")));
    }
    // SAFETY: `prog` is alive (the caller's contract) and was compiled above.
    let ptx = unsafe { nvrtc::get_ptx(prog) }
        .map(|p| c_chars_to_string(&p))
        .map_err(|e| err(format!("nvrtcGetPTX: {e}")))?;
    let mut size = 0usize;
    // SAFETY: `prog` is alive; `size` is a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| err(format!("nvrtcGetCUBINSize: {e}")))?;
    let mut cubin = vec![0u8; size];
    if size > 0 {
        // SAFETY: `cubin` holds the `size` bytes NVRTC said the CUBIN takes.
        unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(|e| err(format!("nvrtcGetCUBIN: {e}")))?;
    }
    let resources = parse_ptxas_log(&log);
    Ok(Compiled {
        arch,
        ptx,
        cubin,
        log,
        resources,
        cached: false,
    })
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Per-kernel resources from ptxas' `-v` lines:
/// ```text
/// ptxas info    : Compiling entry function 'mmvq_q4_0' for 'sm_80'
/// ptxas info    : Function properties for mmvq_q4_0
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 400 bytes cmem[0]
/// ```
/// (Device functions' property lines are skipped: only entry functions are reported.)
pub fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let mut current: Option<KernelResources> = None;
    let mut in_props_of_current = false;
    for line in log.lines() {
        let l = line.trim();
        if let Some(rest) = l
            .strip_prefix("ptxas info")
            .map(|r| r.trim_start_matches([' ', ':']).trim())
        {
            if let Some(name) = rest
                .strip_prefix("Compiling entry function '")
                .and_then(|r| r.split('\'').next())
            {
                if let Some(c) = current.take() {
                    out.push(c);
                }
                current = Some(KernelResources {
                    name: name.to_string(),
                    ..Default::default()
                });
                in_props_of_current = false;
            } else if let Some(name) = rest.strip_prefix("Function properties for ") {
                in_props_of_current = current.as_ref().is_some_and(|c| c.name == name.trim());
            } else if let Some(c) = current.as_mut().filter(|_| rest.starts_with("Used ")) {
                for part in rest.split(',') {
                    let p = part.trim();
                    if let Some(n) = number_before(p, " registers") {
                        c.registers = n;
                    } else if let Some(n) = number_before(p, " bytes smem") {
                        c.shared = n;
                    }
                }
            }
        } else if in_props_of_current && l.contains("bytes stack frame") {
            if let Some(c) = current.as_mut() {
                for part in l.split(',') {
                    let p = part.trim();
                    if let Some(n) = number_before(p, " bytes stack frame") {
                        c.stack = n;
                    } else if let Some(n) = number_before(p, " bytes spill stores") {
                        c.spill_stores = n;
                    } else if let Some(n) = number_before(p, " bytes spill loads") {
                        c.spill_loads = n;
                    }
                }
            }
            in_props_of_current = false;
        }
    }
    if let Some(c) = current.take() {
        out.push(c);
    }
    out
}

/// `n` from "... n<suffix>" where n is the last word before the suffix.
fn number_before(s: &str, suffix: &str) -> Option<u32> {
    let at = s.find(suffix)?;
    s[..at].split_whitespace().last()?.parse().ok()
}

/// `~/.cache/cascade/cuda-kernels`, or `$CASCADE_KERNEL_CACHE` (empty: no cache).
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("CASCADE_KERNEL_CACHE") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => home().map(|h| h.join(".cache/cascade/cuda-kernels")),
    }
}

/// 64-bit FNV-1a over everything that changes the output (stable across Rust versions, unlike
/// `DefaultHasher`).
fn cache_key(
    source: &str,
    options: &[String],
    arch: u32,
    version: (i32, i32),
    lib_len: u64,
) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(source.as_bytes());
    for o in options {
        // The include path is where the headers are, not what they say: leave it out so that a
        // moved install keeps its cache. (The NVRTC version covers the headers' content.)
        if !o.starts_with("--include-path=") {
            eat(o.as_bytes());
        }
    }
    eat(&arch.to_le_bytes());
    eat(&version.0.to_le_bytes());
    eat(&version.1.to_le_bytes());
    eat(&lib_len.to_le_bytes());
    h
}

const CACHE_MAGIC: &[u8; 8] = b"CSCDKRN1";

/// One file: magic, then the PTX, the log and the CUBIN, each as a little-endian u64 length and
/// its bytes.
fn write_cache(path: &Path, c: &Compiled) -> std::io::Result<()> {
    let dir = path.parent().expect("cache file has a directory");
    std::fs::create_dir_all(dir)?;
    let mut bytes = Vec::with_capacity(c.ptx.len() + c.log.len() + c.cubin.len() + 32);
    bytes.extend_from_slice(CACHE_MAGIC);
    for part in [c.ptx.as_bytes(), c.log.as_bytes(), &c.cubin] {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    // Written under a temporary name, then renamed: a reader sees the whole file or none.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("kernels"),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn read_cache(path: &Path, arch: u32) -> Option<Compiled> {
    let bytes = std::fs::read(path).ok()?;
    let mut rest = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
    let mut parts: Vec<&[u8]> = Vec::with_capacity(3);
    for _ in 0..3 {
        let (len, tail) = rest.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        if tail.len() < len {
            return None;
        }
        let (part, tail) = tail.split_at(len);
        parts.push(part);
        rest = tail;
    }
    if !rest.is_empty() {
        return None;
    }
    let ptx = String::from_utf8(parts[0].to_vec()).ok()?;
    let log = String::from_utf8(parts[1].to_vec()).ok()?;
    Some(Compiled {
        arch,
        ptx,
        cubin: parts[2].to_vec(),
        resources: parse_ptxas_log(&log),
        log,
        cached: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_lines_parse_per_entry_function() {
        let log = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'mmvq_q4_0' for 'sm_80'
ptxas info    : Function properties for mmvq_q4_0
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 400 bytes cmem[0]
ptxas info    : Function properties for some_device_fn
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function 'attention_paged' for 'sm_80'
ptxas info    : Function properties for attention_paged
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, 43136 bytes smem, 452 bytes cmem[0]
";
        let r = parse_ptxas_log(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                name: "mmvq_q4_0".into(),
                registers: 40,
                spill_stores: 0,
                spill_loads: 0,
                shared: 256,
                stack: 0
            }
        );
        assert_eq!(
            (
                r[1].registers,
                r[1].spill_stores,
                r[1].spill_loads,
                r[1].shared,
                r[1].stack
            ),
            (255, 12, 8, 43136, 16)
        );
    }

    #[test]
    fn cache_files_round_trip_and_refuse_damage() {
        let dir = std::env::temp_dir().join(format!("cascade-nvrtc-cache-{}", std::process::id()));
        let p = dir.join("k-sm_80.bin");
        let c = Compiled {
            arch: 80,
            ptx: "// ptx".into(),
            cubin: vec![1, 2, 3, 0, 255],
            log: "ptxas info    : Compiling entry function 'k' for 'sm_80'\n".into(),
            resources: Vec::new(),
            cached: false,
        };
        write_cache(&p, &c).unwrap();
        let back = read_cache(&p, 80).unwrap();
        assert_eq!(
            (back.ptx.as_str(), back.cubin.as_slice()),
            ("// ptx", &[1u8, 2, 3, 0, 255][..])
        );
        assert_eq!(back.resources.len(), 1);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_cache(&p, 80).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cache_key_depends_on_every_input_but_the_include_path() {
        let o = |inc: &str| vec!["--a".to_string(), format!("--include-path={inc}")];
        let k = cache_key("src", &o("/x"), 80, (12, 8), 1);
        assert_eq!(k, cache_key("src", &o("/y"), 80, (12, 8), 1));
        assert_ne!(k, cache_key("src2", &o("/x"), 80, (12, 8), 1));
        assert_ne!(k, cache_key("src", &o("/x"), 90, (12, 8), 1));
        assert_ne!(k, cache_key("src", &o("/x"), 80, (12, 9), 1));
        assert_ne!(k, cache_key("src", &o("/x"), 80, (12, 8), 2));
        assert_ne!(k, cache_key("src", &["--b".to_string()], 80, (12, 8), 1));
    }
}
