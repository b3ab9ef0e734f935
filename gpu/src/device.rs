//! One seam for the two places the kernels run: a CUDA device through the driver API, and the
//! host shim that runs the same kernel sources on the CPU (tests). Memory is untyped buffers
//! addressed by 64-bit device pointers; a launch is a kernel name, its geometry and its
//! arguments laid out as `cuLaunchKernel` takes them.

use std::ffi::c_void;
use std::sync::Arc;

use crate::error::{GpuError, Result};
use crate::graph::Recorded;

pub use crate::kernels::Launch;

/// Arguments of one launch, each in its own 8-byte slot (little-endian: a 32-bit value is read
/// from the slot's first four bytes, as the driver reads `kernelParams`).
#[derive(Debug, Default)]
pub struct Args {
    pub(crate) slots: Vec<u64>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    pub fn buf(self, b: &DevBuf) -> Args {
        self.ptr(b.ptr)
    }

    /// A pointer `offset` bytes into `b` (checked against its length).
    pub fn buf_at(self, b: &DevBuf, offset: usize) -> Args {
        assert!(
            offset <= b.len,
            "argument offset {offset} past a {}-byte buffer",
            b.len
        );
        self.ptr(b.ptr + offset as u64)
    }

    pub fn ptr(mut self, p: u64) -> Args {
        self.slots.push(p);
        self
    }

    pub fn i32(mut self, v: i32) -> Args {
        self.slots.push(v as u32 as u64);
        self
    }

    /// A `usize` as an `int` (checked: the kernels take 32-bit sizes).
    pub fn int(self, v: usize) -> Args {
        self.i32(i32::try_from(v).expect("kernel size argument exceeds i32"))
    }

    pub fn f32(mut self, v: f32) -> Args {
        self.slots.push(v.to_bits() as u64);
        self
    }

    /// The `kernelParams` array: one pointer per slot, valid while `self` lives unmoved.
    fn params(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect()
    }
}

enum Inner {
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaDevice),
    #[cfg(feature = "shim")]
    Shim,
}

/// A device the kernels run on (cheap to clone).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

/// Device memory; freed on drop.
pub struct DevBuf {
    ptr: u64,
    len: usize,
    dev: Arc<Inner>,
}

impl DevBuf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        self.dev.free(self.ptr, self.len);
    }
}

/// Alignment of every allocation (the driver gives at least 256 bytes).
#[cfg(feature = "shim")]
const ALIGN: usize = 256;

impl Inner {
    fn alloc(&self, len: usize) -> Result<u64> {
        match self {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.alloc(len),
            #[cfg(feature = "shim")]
            Inner::Shim => {
                let layout = std::alloc::Layout::from_size_align(len.max(1), ALIGN)
                    .map_err(|e| GpuError::Driver(e.to_string()))?;
                // SAFETY: the layout has a non-zero size.
                let p = unsafe { std::alloc::alloc_zeroed(layout) };
                if p.is_null() {
                    return Err(GpuError::Driver(format!(
                        "host shim: cannot allocate {len} bytes"
                    )));
                }
                Ok(p as u64)
            }
        }
    }

    fn free(&self, ptr: u64, len: usize) {
        match self {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.free(ptr),
            #[cfg(feature = "shim")]
            Inner::Shim => {
                let layout = std::alloc::Layout::from_size_align(len.max(1), ALIGN)
                    .expect("layout was valid at allocation");
                // SAFETY: `ptr` came from `alloc_zeroed` with this same layout (DevBuf keeps
                // the length it was allocated with) and is freed once, by DevBuf's drop.
                unsafe { std::alloc::dealloc(ptr as *mut u8, layout) }
            }
        }
        let _ = (ptr, len);
    }
}

impl Device {
    /// The host shim: the kernel sources compiled for the CPU (tests; each CUDA thread a fiber,
    /// blocks spread over the cores).
    #[cfg(feature = "shim")]
    pub fn shim() -> Device {
        Device {
            inner: Arc::new(Inner::Shim),
        }
    }

    /// CUDA device `index` with the kernels compiled for its architecture.
    #[cfg(feature = "cuda")]
    pub fn cuda(index: usize) -> Result<Device> {
        Ok(Device {
            inner: Arc::new(Inner::Cuda(crate::cuda::CudaDevice::open(index)?)),
        })
    }

    /// Whether the tensor-core kernels (`mmq_mma_*`: sm_75 on) run here; the host shim runs them
    /// too. `CASCADE_GPU_MMA=0` turns them off (prompt rows then take the dp4a kernels).
    pub fn has_tensor_cores(&self) -> bool {
        if std::env::var("CASCADE_GPU_MMA").is_ok_and(|v| v == "0") {
            return false;
        }
        match &*self.inner {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.capability >= crate::kernels::MMA_MIN_CC,
            #[cfg(feature = "shim")]
            Inner::Shim => true,
        }
    }

    pub fn is_shim(&self) -> bool {
        #[cfg(feature = "shim")]
        if matches!(*self.inner, Inner::Shim) {
            return true;
        }
        false
    }

    pub fn alloc(&self, len: usize) -> Result<DevBuf> {
        Ok(DevBuf {
            ptr: self.inner.alloc(len)?,
            len,
            dev: self.inner.clone(),
        })
    }

    /// A buffer holding `data`.
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<DevBuf> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        self.write(&buf, 0, data)?;
        Ok(buf)
    }

    /// A buffer of `len` bytes written `step` bytes at a time: `fill(offset, chunk)` puts bytes
    /// `offset..offset + chunk.len()` into `chunk`, which on a GPU is a pinned host buffer copied
    /// to the device by DMA (weights go from the store's mapping to the device through it, with
    /// no host copy of a whole matrix), and on the shim a plain one.
    pub fn upload_staged(
        &self,
        len: usize,
        step: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> Result<()>,
    ) -> Result<DevBuf> {
        let buf = self.alloc(len)?;
        let step = step.clamp(1, len.max(1));
        match &*self.inner {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.htod_staged(buf.ptr, len, step, &mut fill)?,
            #[cfg(feature = "shim")]
            Inner::Shim => in_chunks(len, &mut vec![0u8; step], &mut fill, |off, part| {
                self.write(&buf, off, part)
            })?,
        }
        Ok(buf)
    }

    /// Copies `data` to `buf` at byte `offset`.
    pub fn write<T: Copy>(&self, buf: &DevBuf, offset: usize, data: &[T]) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        check_range(buf, offset, bytes)?;
        crate::graph::refuse_while_recording("a copy to the device")?;
        match &*self.inner {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.htod(buf.ptr + offset as u64, data),
            #[cfg(feature = "shim")]
            Inner::Shim => {
                // SAFETY: `buf` is a live host allocation of `buf.len` bytes and
                // `offset + bytes <= buf.len` was checked; `data` is `bytes` bytes of plain
                // values and cannot overlap a buffer only DevBuf hands out.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr() as *const u8,
                        (buf.ptr as *mut u8).add(offset),
                        bytes,
                    )
                };
                Ok(())
            }
        }
    }

    /// Copies `out.len()` values from `buf` at byte `offset` (after the work queued before).
    /// `T` is a plain number type ([`Pod`]): any bytes the device holds are a valid value.
    ///
    /// ```
    /// # fn f(d: &cascade_gpu::Device, b: &cascade_gpu::DevBuf) -> cascade_gpu::Result<()> {
    /// let mut out = [0u32; 4];
    /// d.read(b, 0, &mut out)
    /// # }
    /// ```
    /// A type some bit patterns of which are no value cannot be filled (the same call with
    /// `bool` does not compile):
    /// ```compile_fail
    /// # fn f(d: &cascade_gpu::Device, b: &cascade_gpu::DevBuf) -> cascade_gpu::Result<()> {
    /// let mut out = [false; 4];
    /// d.read(b, 0, &mut out)
    /// # }
    /// ```
    pub fn read<T: Pod>(&self, buf: &DevBuf, offset: usize, out: &mut [T]) -> Result<()> {
        let bytes = std::mem::size_of_val(out);
        check_range(buf, offset, bytes)?;
        crate::graph::refuse_while_recording("a copy from the device")?;
        match &*self.inner {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.dtoh(out, buf.ptr + offset as u64),
            #[cfg(feature = "shim")]
            Inner::Shim => {
                // SAFETY: as in `write`, the range was checked against the live allocation, and
                // `out` is `bytes` bytes of a `Pod` type, for which every bit pattern is valid.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (buf.ptr as *const u8).add(offset),
                        out.as_mut_ptr() as *mut u8,
                        bytes,
                    )
                };
                Ok(())
            }
        }
    }

    /// Runs kernel `name` (the arguments must match its parameter list: the kernels' contract
    /// in `kernels/cuda/`, which the launchers in this crate keep; crate-private, since a launch
    /// dereferences the device pointers among its arguments).
    /// While this thread records a graph ([`Device::run_graph`]), the launch is recorded.
    pub(crate) fn launch(&self, name: &'static str, l: Launch, args: Args) -> Result<()> {
        let Some(mut args) = crate::graph::record(name, l, args) else {
            return Ok(());
        };
        let mut params = args.params();
        match &*self.inner {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.launch(name, l, &mut params),
            #[cfg(feature = "shim")]
            // SAFETY: the launchers in this crate (the only callers of this crate-private
            // function) pass the kernel's parameter list with buffers of the sizes its shapes
            // imply: the contract in `kernels/cuda/`.
            Inner::Shim => unsafe {
                crate::shim::launch(name, l.grid, l.block, l.shared, &mut params)
            },
        }
    }

    /// Waits for the queued work.
    pub fn sync(&self) -> Result<()> {
        crate::graph::refuse_while_recording("a wait")?;
        match &*self.inner {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.sync(),
            #[cfg(feature = "shim")]
            Inner::Shim => Ok(()),
        }
    }
}

/// An instantiated CUDA graph (`cuGraphExec`), destroyed on drop; it keeps its device alive.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct GraphExec {
    #[cfg(feature = "cuda")]
    exec: cudarc::driver::sys::CUgraphExec,
    dev: Arc<Inner>,
}

// SAFETY: an executable graph is a driver object any thread may launch or destroy once its
// context is current there, which every use makes it (`CudaDevice::current`); one owner (a
// workspace behind its model's mutex) uses it at a time.
unsafe impl Send for GraphExec {}

impl Drop for GraphExec {
    fn drop(&mut self) {
        match &*self.dev {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.destroy_exec(self.exec),
            #[cfg(feature = "shim")]
            Inner::Shim => {}
        }
    }
}

impl Device {
    /// A graph of `list`, instantiated (none on the shim, which replays the list).
    pub(crate) fn instantiate_graph(&self, list: &[Recorded]) -> Result<Option<GraphExec>> {
        match &*self.inner {
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => Ok(Some(GraphExec {
                exec: d.instantiate(list)?,
                dev: self.inner.clone(),
            })),
            #[cfg(feature = "shim")]
            Inner::Shim => {
                let _ = list;
                Ok(None)
            }
        }
    }

    /// Updates `exec` in place to run `list` (same kernels, other arguments or grids); false
    /// when the driver cannot (then a new graph is instantiated).
    pub(crate) fn update_graph(
        &self,
        exec: Option<&mut GraphExec>,
        list: &[Recorded],
    ) -> Result<bool> {
        match (&*self.inner, exec) {
            #[cfg(feature = "cuda")]
            (Inner::Cuda(d), Some(e)) => d.update(e.exec, list),
            #[cfg(feature = "shim")]
            (Inner::Shim, _) => Ok(true),
            #[cfg(feature = "cuda")]
            _ => Ok(false),
        }
    }

    /// Runs the graph of `list` (on the shim: the recorded launches, in order).
    pub(crate) fn launch_graph(&self, exec: Option<&GraphExec>, list: &[Recorded]) -> Result<()> {
        match (&*self.inner, exec) {
            #[cfg(feature = "cuda")]
            (Inner::Cuda(d), Some(e)) => {
                let _ = list; // the graph holds it
                d.launch_graph(e.exec)
            }
            #[cfg(feature = "shim")]
            (Inner::Shim, _) => {
                for r in list {
                    let l = r.launch;
                    // SAFETY: a recorded launch keeps the arguments a launcher in this crate
                    // passed to `launch` (above), whose contract it met then; the buffers they
                    // point at are the model's and its workspace's, alive while it replays.
                    r.with_params(|p| unsafe {
                        crate::shim::launch(r.name, l.grid, l.block, l.shared, p)
                    })?;
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            _ => Err(GpuError::Driver(
                "a graph that was never instantiated".into(),
            )),
        }
    }
}

/// Bytes `0..len` a `buf` at a time: `fill(offset, part)` writes them into `buf`'s first
/// `part.len()` bytes, then `copy(offset, part)` moves them on (each copy done before the refill).
pub(crate) fn in_chunks(
    len: usize,
    buf: &mut [u8],
    fill: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>,
    mut copy: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let step = buf.len();
    for off in (0..len).step_by(step) {
        let part = &mut buf[..step.min(len - off)];
        fill(off, part)?;
        copy(off, part)?;
    }
    Ok(())
}

fn check_range(buf: &DevBuf, offset: usize, bytes: usize) -> Result<()> {
    match offset.checked_add(bytes) {
        Some(end) if end <= buf.len => Ok(()),
        _ => Err(GpuError::Driver(format!(
            "copy of {bytes} bytes at offset {offset} outside a {}-byte buffer",
            buf.len
        ))),
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A plain number type that a copy from the device may fill: every bit pattern of its size is
/// a valid value (no `bool`, `char`, references or enums). Sealed: implemented here for the
/// integer and float types only.
pub trait Pod: Copy + sealed::Sealed + 'static {}

macro_rules! pod {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Pod for $t {}
    )*};
}
pod!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
