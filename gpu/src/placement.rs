//! Where a model runs: `--device auto|cpu|cuda[:N]`, the GPUs this machine has, and the
//! decision `auto` makes (a GPU when one is present and the model fits, else the CPU).

use std::fmt;
use std::str::FromStr;

use crate::error::{GpuError, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// A GPU when one is present and the model fits in its memory, otherwise the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device `N` (`cuda` alone is device 0).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("`{s}`: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// One GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (u32, u32),
    pub total_bytes: usize,
    pub free_bytes: usize,
}

/// Where a model goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda(GpuInfo),
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::Cuda(g) => write!(f, "cuda:{} ({})", g.index, g.name),
        }
    }
}

/// Bytes a model needs on a GPU beyond its weights: the KV blocks given to it, activations and
/// the kernels' own workspace.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub weights: usize,
    pub kv: usize,
    pub workspace: usize,
}

impl Footprint {
    pub fn total(&self) -> usize {
        self.weights + self.kv + self.workspace
    }
}

/// The GPUs this machine has: `Err(NoDriver)` without a driver (never a panic), an empty list
/// when the driver finds none.
pub fn probe() -> Result<Vec<GpuInfo>> {
    #[cfg(feature = "cuda")]
    {
        crate::driver::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(GpuError::NotBuilt)
    }
}

/// Decides where the model `what` (needing `need`) runs. `gpus` is [`probe`]'s answer. An
/// explicit `cuda[:N]` that cannot be honoured is an error naming the reason (no driver, no such
/// device, or the bytes missing); `auto` falls back to the CPU and says why in one log line.
pub fn place(
    spec: DeviceSpec,
    what: &str,
    need: Footprint,
    gpus: &Result<Vec<GpuInfo>>,
) -> Result<Placement> {
    match spec {
        DeviceSpec::Cpu => Ok(Placement::Cpu),
        DeviceSpec::Cuda(index) => {
            let gpu = pick(index, gpus)
                .and_then(|g| fits(what, need, g).map(|_| g))
                .map_err(|e| GpuError::CannotPlace {
                    model: what.to_string(),
                    spec: spec.to_string(),
                    reason: Box::new(e),
                })?;
            Ok(Placement::Cuda(gpu.clone()))
        }
        DeviceSpec::Auto => {
            let chosen = pick(0, gpus).and_then(|g| fits(what, need, g).map(|_| g));
            match chosen {
                Ok(g) => {
                    tracing::info!("{what}: on cuda:{} ({}), auto", g.index, g.name);
                    Ok(Placement::Cuda(g.clone()))
                }
                Err(why) => {
                    tracing::info!("{what}: on the CPU (auto: {why})");
                    Ok(Placement::Cpu)
                }
            }
        }
    }
}

fn pick(index: usize, gpus: &Result<Vec<GpuInfo>>) -> Result<&GpuInfo> {
    let list = match gpus {
        Ok(l) => l,
        Err(GpuError::NotBuilt) => return Err(GpuError::NotBuilt),
        Err(GpuError::NoDriver(why)) => return Err(GpuError::NoDriver(why.clone())),
        Err(e) => return Err(GpuError::Driver(e.to_string())),
    };
    list.get(index).ok_or(GpuError::NoSuchDevice {
        index,
        count: list.len(),
    })
}

fn fits(what: &str, need: Footprint, gpu: &GpuInfo) -> Result<()> {
    if need.total() <= gpu.free_bytes {
        return Ok(());
    }
    Err(GpuError::OutOfMemory {
        model: what.to_string(),
        device: gpu.index,
        need: need.total(),
        free: gpu.free_bytes,
        missing: need.total() - gpu.free_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(free: usize) -> GpuInfo {
        GpuInfo {
            index: 0,
            name: "test".into(),
            capability: (9, 0),
            total_bytes: free,
            free_bytes: free,
        }
    }

    const NEED: Footprint = Footprint {
        weights: 1000,
        kv: 100,
        workspace: 10,
    };

    #[test]
    fn specs_parse_and_print() {
        for (s, d) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["", "cuda:", "cuda:x", "tpu", "cuda:-1"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_uses_a_gpu_that_fits_and_falls_back_otherwise() {
        let some = Ok(vec![gpu(2000)]);
        let small = Ok(vec![gpu(1000)]);
        let none = Ok(vec![]);
        let nodriver = Err(GpuError::NoDriver("libcuda.so not found".into()));
        let a = DeviceSpec::Auto;
        assert!(matches!(place(a, "m", NEED, &some), Ok(Placement::Cuda(_))));
        for g in [&small, &none, &nodriver] {
            assert_eq!(place(a, "m", NEED, g).unwrap(), Placement::Cpu);
        }
        assert_eq!(
            place(DeviceSpec::Cpu, "m", NEED, &some).unwrap(),
            Placement::Cpu
        );
    }

    #[test]
    fn an_explicit_gpu_that_cannot_be_had_is_a_clear_error() {
        let c = DeviceSpec::Cuda(0);
        let e = place(
            c,
            "target",
            NEED,
            &Err(GpuError::NoDriver("no libcuda".into())),
        );
        assert!(e.unwrap_err().to_string().contains("no CUDA driver"));
        let e = place(DeviceSpec::Cuda(1), "target", NEED, &Ok(vec![gpu(5000)]));
        let Err(GpuError::CannotPlace { reason, .. }) = e else {
            panic!("{e:?}")
        };
        assert!(matches!(
            *reason,
            GpuError::NoSuchDevice { index: 1, count: 1 }
        ));
        let e = place(c, "target", NEED, &Ok(vec![gpu(1000)])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("target") && msg.contains("110 bytes"), "{msg}");
    }
}
