//! The CUDA driver through cudarc (loaded at run time): finding it without panicking, and
//! describing the devices.

use cudarc::driver::{result, sys};

use crate::error::{GpuError, Result};
use crate::placement::GpuInfo;

fn drv(e: result::DriverError) -> GpuError {
    GpuError::Driver(e.to_string())
}

/// Whether `libcuda` can be loaded (cudarc panics on first use when it cannot).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its candidate names; nothing from it
    // is called.
    unsafe { sys::is_culib_present() }
}

/// Initializes the driver once; `NoDriver` when it is missing or refuses.
pub fn init() -> Result<()> {
    if !driver_present() {
        return Err(GpuError::NoDriver("libcuda.so not found".into()));
    }
    result::init().map_err(|e| GpuError::NoDriver(format!("cuInit: {e}")))
}

/// Every device with its capability and memory (free memory through its primary context).
pub fn probe() -> Result<Vec<GpuInfo>> {
    init()?;
    let count = result::device::get_count().map_err(drv)?;
    (0..count).map(|i| describe(i as usize)).collect()
}

fn describe(index: usize) -> Result<GpuInfo> {
    let dev = result::device::get(index as i32).map_err(drv)?;
    let name = result::device::get_name(dev).map_err(drv)?;
    use sys::CUdevice_attribute::*;
    // SAFETY: `dev` came from `device::get` above.
    let (major, minor, total) = unsafe {
        (
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                .map_err(drv)?,
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                .map_err(drv)?,
            result::device::total_mem(dev).map_err(drv)?,
        )
    };
    // SAFETY: the primary context of a device returned by `device::get`; made current on this
    // thread only to read the free memory, and released again.
    let free = unsafe {
        let ctx = result::primary_ctx::retain(dev).map_err(drv)?;
        result::ctx::set_current(ctx).map_err(drv)?;
        let free = result::mem_get_info().map_err(drv).map(|(f, _)| f);
        let _ = result::primary_ctx::release(dev);
        free?
    };
    Ok(GpuInfo {
        index,
        name,
        capability: (major as u32, minor as u32),
        total_bytes: total,
        free_bytes: free,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_never_panics_and_says_why_there_is_no_gpu() {
        match probe() {
            Ok(gpus) => {
                for g in &gpus {
                    assert!(g.total_bytes > 0 && g.capability.0 >= 3, "{g:?}");
                }
                println!("GPUs: {gpus:?}");
            }
            Err(GpuError::NoDriver(why)) => {
                assert!(!driver_present() || why.starts_with("cuInit"), "{why}");
                println!("no GPU here: {why}");
            }
            Err(e) => panic!("unexpected probe error: {e}"),
        }
    }
}
