//! A CUDA device through the driver API: its primary context, the kernel module NVRTC compiled
//! for its architecture, and one stream (non-blocking, so that no other thread's use of the
//! legacy default stream can disturb a graph capture on it) on which every copy, launch and
//! graph runs in order. A copy returns with its host buffer free again (pageable memory is
//! staged by the driver; the pinned staging buffer and reads are waited for).

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

use cudarc::driver::{result, sys};

use crate::device::Launch;
use crate::error::{GpuError, Result};
use crate::graph::Recorded;

fn drv(what: &str) -> impl Fn(result::DriverError) -> GpuError + '_ {
    move |e| GpuError::Driver(format!("{what}: {e}"))
}

pub(crate) struct CudaDevice {
    /// Compute capability, major * 10 + minor.
    pub(crate) capability: u32,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    module: sys::CUmodule,
    functions: Mutex<HashMap<String, usize>>,
    /// The pinned host buffer uploads are staged through (allocated at the first, grown to the
    /// largest step asked for, freed with the device).
    staging: Mutex<Option<Pinned>>,
}

/// Page-locked host memory from `cuMemHostAlloc`.
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: driver API handles (device, context, module, functions) are process-wide values
// usable from any thread once the context is made current there, which every method does
// first; the function table is behind a mutex.
unsafe impl Send for CudaDevice {}
// SAFETY: as above; no method hands out interior references.
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    pub(crate) fn open(index: usize) -> Result<CudaDevice> {
        crate::driver::init()?;
        let dev = result::device::get(index as i32).map_err(drv("cuDeviceGet"))?;
        // SAFETY: `dev` is a device the driver returned; its primary context is retained here
        // and released in Drop.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(drv("retain context"))?;
        // SAFETY: a context retained just above.
        unsafe { result::ctx::set_current(ctx) }.map_err(drv("set context"))?;
        let info = crate::driver::probe()?
            .into_iter()
            .nth(index)
            .ok_or(GpuError::NoSuchDevice { index, count: 0 })?;
        let (major, minor) = info.capability;
        let compiled = crate::nvrtc::compile(major * 10 + minor)?;
        // SAFETY: a complete CUBIN NVRTC produced for this device's architecture, alive for
        // the call (the driver copies what it loads).
        let module = unsafe { result::module::load_data(compiled.cubin.as_ptr() as *const c_void) }
            .map_err(drv("load kernel module"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(drv("create stream"))?;
        tracing::info!(
            "cuda:{index}: {} (sm_{}{}), kernels loaded",
            info.name,
            info.capability.0,
            info.capability.1
        );
        Ok(CudaDevice {
            capability: major * 10 + minor,
            dev,
            ctx,
            stream,
            module,
            functions: Mutex::new(HashMap::new()),
            staging: Mutex::new(None),
        })
    }

    fn current(&self) -> Result<()> {
        // SAFETY: the context this device retained and has not released.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(drv("set context"))
    }

    pub(crate) fn alloc(&self, len: usize) -> Result<u64> {
        self.current()?;
        // SAFETY: plain allocation; callers treat the bytes as uninitialized device memory.
        unsafe { result::malloc_sync(len.max(1)) }.map_err(|e| {
            let free = result::mem_get_info().map(|(f, _)| f).unwrap_or(0);
            GpuError::Driver(format!("cuMemAlloc of {len} bytes ({free} free): {e}"))
        })
    }

    pub(crate) fn free(&self, ptr: u64) {
        // Work queued on the stream may still use the memory: it finishes first.
        if self.current().is_ok() && self.wait().is_ok() {
            // SAFETY: `ptr` came from `alloc` on this context, DevBuf frees it once, and nothing
            // queued uses it any more (the stream is idle; graphs only run on it).
            let _ = unsafe { result::free_sync(ptr) };
        }
    }

    /// Waits for everything queued on the stream.
    fn wait(&self) -> Result<()> {
        // SAFETY: the stream this device created and has not destroyed.
        unsafe { result::stream::synchronize(self.stream) }.map_err(drv("synchronize stream"))
    }

    /// Copies pageable host memory to the device, in stream order. The driver stages pageable
    /// memory before the call returns (no wait is needed for `src` to be free again: CUDA's
    /// "API synchronization behavior"), so a pass's index arrays cost one call each, not a wait.
    pub(crate) fn htod<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        self.current()?;
        // SAFETY: the caller checked that `dst..dst + size_of_val(src)` lies in a live
        // allocation of this context; `src` is pageable memory (a Rust slice; the one pinned
        // buffer goes through `htod_pinned`), copied to staging before the call returns.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }.map_err(drv("copy to device"))
    }

    /// Copies from the pinned staging buffer, and waits: the DMA reads it after the call, so it
    /// may be refilled only then.
    fn htod_pinned(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.current()?;
        // SAFETY: as `htod`; `src` (pinned) is not touched until the wait below returns.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(drv("copy to device"))?;
        self.wait()
    }

    /// Fills `dst..dst + len` `step` bytes at a time through the pinned staging buffer (see
    /// `Device::upload_staged`); each copy completes before the buffer is refilled. Where pinned
    /// memory cannot be had, a pageable buffer of the same size does the job (slower copies).
    pub(crate) fn htod_staged(
        &self,
        dst: u64,
        len: usize,
        step: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        self.current()?;
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if staging.as_ref().is_none_or(|p| p.len < step) {
            if let Some(old) = staging.take() {
                // SAFETY: allocated by cuMemHostAlloc below, no copy from it is in flight (every
                // copy here is synchronous), freed once.
                unsafe { result::free_host(old.ptr as *mut c_void) }.map_err(drv("free pinned"))?;
            }
            // SAFETY: plain page-locked allocation of `step` bytes; written before it is read.
            match unsafe { result::malloc_host(step, 0) } {
                Ok(ptr) => {
                    *staging = Some(Pinned {
                        ptr: ptr as *mut u8,
                        len: step,
                    })
                }
                Err(e) => {
                    tracing::warn!(
                        "no pinned staging buffer of {step} bytes ({e}): pageable copies"
                    );
                    return self.htod_chunks(dst, len, &mut vec![0u8; step], fill);
                }
            }
        }
        let pinned = staging.as_ref().expect("allocated above");
        // SAFETY: `pinned` holds `pinned.len >= step` bytes, owned by this device and guarded by
        // the lock; no copy from it is in flight (each is waited for).
        let buf = unsafe { std::slice::from_raw_parts_mut(pinned.ptr, step) };
        self.htod_chunks(dst, len, buf, fill)
    }

    /// Fills `dst..dst + len` through `buf`, a chunk at a time, each copy waited for.
    fn htod_chunks(
        &self,
        dst: u64,
        len: usize,
        buf: &mut [u8],
        fill: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        crate::device::in_chunks(len, buf, fill, |off, part| {
            self.htod_pinned(dst + off as u64, part)
        })
    }

    pub(crate) fn dtoh<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<()> {
        self.current()?;
        // SAFETY: the caller checked the source range against a live allocation; `T` is a plain
        // value type for which any bytes are valid (f32, i32, u8); `dst` is written before the
        // wait below returns.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
            .map_err(drv("copy from device"))?;
        self.wait()
    }

    fn function(&self, name: &str) -> Result<sys::CUfunction> {
        let mut f = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&h) = f.get(name) {
            return Ok(h as sys::CUfunction);
        }
        let cname = CString::new(name).map_err(|_| GpuError::UnknownKernel(name.into()))?;
        // SAFETY: the module is loaded and alive for the device's lifetime.
        let h = unsafe { result::module::get_function(self.module, cname) }
            .map_err(|_| GpuError::UnknownKernel(name.into()))?;
        f.insert(name.to_string(), h as usize);
        Ok(h)
    }

    pub(crate) fn launch(&self, name: &str, l: Launch, params: &mut [*mut c_void]) -> Result<()> {
        self.current()?;
        let f = self.function(name)?;
        let (g, b) = (l.grid, l.block);
        // SAFETY: `params` points at one value per kernel parameter in the order and sizes of
        // the kernel's signature (the launchers keep the kernels' contract), alive until the
        // launch call returns (the driver copies them); the pointers among them are live
        // allocations of this context sized for the geometry.
        unsafe {
            result::launch_kernel(
                f,
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                l.shared,
                self.stream,
                params,
            )
        }
        .map_err(|e| GpuError::Driver(format!("launch {name}: {e}")))
    }

    /// Waits for this device's work: its stream (all of it runs there). Not the whole context,
    /// which another model's graph capture may be using.
    pub(crate) fn sync(&self) -> Result<()> {
        self.current()?;
        self.wait()
    }

    /// The graph of `list`: its launches captured on the stream (relaxed mode: the capture does
    /// not forbid other threads' calls, and nothing here copies or waits while it runs).
    fn capture(&self, list: &[Recorded]) -> Result<sys::CUgraph> {
        self.current()?;
        use sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED as RELAXED;
        // SAFETY: the device's own stream, not capturing (captures are not nested: the recorder
        // refuses it, and every capture below ends before this returns).
        unsafe { result::stream::begin_capture(self.stream, RELAXED) }
            .map_err(drv("begin graph capture"))?;
        let mut launched = Ok(());
        for r in list {
            launched = r.with_params(|params| self.launch(r.name, r.launch, params));
            if launched.is_err() {
                break;
            }
        }
        // SAFETY: ends the capture begun above on the same stream, whatever happened.
        let graph = unsafe { result::stream::end_capture(self.stream) }
            .map_err(drv("end graph capture"))?;
        if let Err(e) = launched {
            // SAFETY: the graph the capture just made, destroyed once.
            let _ = unsafe { result::graph::destroy(graph) };
            return Err(e);
        }
        Ok(graph)
    }

    /// Captures `list` and instantiates its graph.
    pub(crate) fn instantiate(&self, list: &[Recorded]) -> Result<sys::CUgraphExec> {
        let graph = self.capture(list)?;
        // SAFETY: a graph just captured; it is destroyed once, after instantiation (the
        // executable graph does not refer to it).
        unsafe {
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = result::graph::destroy(graph);
            exec.map_err(drv("instantiate graph"))
        }
    }

    /// Captures `list` and updates `exec` to it in place; false when the driver refuses (the
    /// graph's shape differs), `exec` then unchanged.
    pub(crate) fn update(&self, exec: sys::CUgraphExec, list: &[Recorded]) -> Result<bool> {
        let graph = self.capture(list)?;
        let mut info = std::mem::MaybeUninit::<sys::CUgraphExecUpdateResultInfo>::zeroed();
        // SAFETY: `exec` is an executable graph of this context not running on another stream
        // (graphs only run on this device's stream, in order), `graph` the one just captured,
        // destroyed once after the update; `info` is written by the call.
        let r = unsafe {
            let r = sys::cuGraphExecUpdate_v2(exec, graph, info.as_mut_ptr());
            let _ = result::graph::destroy(graph);
            r
        };
        match r {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE => Ok(false),
            e => Err(GpuError::Driver(format!("update graph: {e:?}"))),
        }
    }

    pub(crate) fn launch_graph(&self, exec: sys::CUgraphExec) -> Result<()> {
        self.current()?;
        // SAFETY: an executable graph of this context, launched on this device's stream.
        unsafe { result::graph::launch(exec, self.stream) }.map_err(drv("launch graph"))
    }

    pub(crate) fn destroy_exec(&self, exec: sys::CUgraphExec) {
        if self.current().is_ok() && self.wait().is_ok() {
            // SAFETY: an executable graph of this context, not running (the stream is idle),
            // destroyed once (its owner's drop).
            let _ = unsafe { result::graph::exec_destroy(exec) };
        }
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.current().is_ok() {
            // SAFETY: the stream created in `open`, drained and destroyed once; the module loaded
            // there, unloaded once; the primary context retained there, released once.
            unsafe {
                let _ = result::stream::synchronize(self.stream);
                let _ = result::stream::destroy(self.stream);
                if let Some(p) = self.staging.get_mut().ok().and_then(|s| s.take()) {
                    let _ = result::free_host(p.ptr as *mut c_void);
                }
                let _ = result::module::unload(self.module);
                let _ = result::primary_ctx::release(self.dev);
            }
        }
    }
}
