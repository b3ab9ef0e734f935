//! The host shim (feature `shim`, tests only): the kernel sources of `kernels/cuda/` compiled
//! for the CPU by `build.rs` (C++20, `gpu/shim/`): each CUDA thread of a block a fiber on one OS
//! thread, switched at barriers and shuffles; a launch's blocks spread over the calling thread and
//! a few helper threads. [`launch`] takes what `cuLaunchKernel` takes; "device" pointers are host
//! pointers.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};

use crate::error::{GpuError, Result};

extern "C" {
    /// gpu/shim/shim.cpp. Returns 0 when the kernel ran, 1 for an unknown name, 2 for a bad
    /// geometry, 3 when dynamic shared memory is asked for, 4 on an internal failure, 5 for a
    /// deadlock (a barrier or shuffle not every thread reached).
    fn cascade_shim_launch(
        kernel_name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        shared_bytes: c_uint,
        args: *mut *mut c_void,
    ) -> c_int;
}

/// Runs kernel `name` on the CPU: `args[i]` points at the value of the kernel's i-th parameter
/// (as `cuLaunchKernel`'s `kernelParams`). Launches from different threads may run at the same
/// time (each OS thread has its own `__shared__` arrays), as launches on different streams.
///
/// # Safety
/// The kernel reads and writes through the pointers among the argument values, with the sizes
/// its shape arguments imply: `args` must hold one pointer per kernel parameter, each pointing
/// at a live value of that parameter's type, and every pointer among those values must address
/// a live buffer of at least the size the shapes imply (the contract in `kernels/cuda/`, which
/// the launchers of this crate keep). Names the shim does not know, and geometry it cannot run,
/// are errors, not undefined behaviour.
pub unsafe fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    args: &mut [*mut c_void],
) -> Result<()> {
    let cname = CString::new(name).map_err(|_| GpuError::Shim {
        kernel: name.to_string(),
        reason: "name holds a NUL byte".into(),
    })?;
    // SAFETY: the name is a NUL-terminated string, grid and block point at three u32 each, all
    // valid for the call; `args` and the buffers its values point at meet this function's
    // contract (its caller's obligation, see `# Safety`).
    let rc = unsafe {
        cascade_shim_launch(
            cname.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            shared,
            args.as_mut_ptr(),
        )
    };
    let reason = match rc {
        0 => return Ok(()),
        1 => "no such kernel in the shim".to_string(),
        2 => format!("bad geometry: grid {grid:?}, block {block:?}"),
        3 => format!("{shared} bytes of dynamic shared memory (the kernels use none)"),
        5 => "deadlock: a __syncthreads or warp shuffle that not every thread reached".to_string(),
        n => format!("internal failure (code {n})"),
    };
    Err(GpuError::Shim {
        kernel: name.to_string(),
        reason,
    })
}
