//! Placing the loaded models: `--device` for the target, `--draft-device` for the draft. `auto`
//! takes a GPU when one is present and the model fits, otherwise the CPU (one log line says
//! which and why); an explicit `cuda[:N]` that cannot be honoured is an error.

use cascade_gpu::{DeviceSpec, Footprint, GpuError, GpuInfo, Placement};

use crate::error::Result;
use crate::model::Model;
use crate::scheduler::SchedulerConfig;

/// Device memory a model needs beyond its weights: its share of the KV budget and the
/// activations of the largest step (logits of every row dominate).
fn footprint(m: &Model, other: Option<&Model>, s: &SchedulerConfig) -> Footprint {
    // In u128: sizes from a model file cannot overflow it (a model that large is refused when
    // its KV storage is made).
    let per = |m: &Model| 2 * 4 * m.config.n_layers as u128 * m.config.kv_dim() as u128;
    let total = (per(m) + other.map_or(0, per)).max(1);
    let budget = s.kv_budget_mb as u128 * (1 << 20);
    let kv = usize::try_from(budget * per(m) / total).unwrap_or(usize::MAX);
    let c = &m.config;
    let row = 4 * (3 * c.hidden_size + 3 * c.q_dim() + 2 * c.intermediate_size + c.vocab_size);
    Footprint {
        weights: m.weight_bytes(),
        kv,
        workspace: s.step_tokens.max(64) * row + (64 << 20),
    }
}

/// Decides and carries out where `target` and `draft` run.
pub fn place_models(
    target: &mut Model,
    target_spec: DeviceSpec,
    draft: Option<&mut Model>,
    draft_spec: DeviceSpec,
    sched: &SchedulerConfig,
) -> Result<()> {
    let wants_gpu = |s: DeviceSpec| s != DeviceSpec::Cpu;
    let draft_wants = draft.is_some() && wants_gpu(draft_spec);
    if !wants_gpu(target_spec) && !draft_wants {
        return Ok(());
    }
    let gpus = cascade_gpu::probe();
    let need_t = footprint(target, draft.as_deref(), sched);
    let mut gpus = gpus;
    let t = cascade_gpu::place(target_spec, "target", need_t, &gpus)?;
    put(target, t, target_spec, &mut gpus, need_t)?;
    if let Some(d) = draft {
        let need_d = footprint(d, Some(target), sched);
        let p = cascade_gpu::place(draft_spec, "draft", need_d, &gpus)?;
        put(d, p, draft_spec, &mut gpus, need_d)?;
    }
    Ok(())
}

/// Moves `m` to its placement; under `auto` a device that cannot be opened (no kernels for it,
/// a driver error) leaves the model on the CPU with a warning. The free memory of the GPU used
/// is reduced by what the model takes, so the next placement sees what is left.
fn put(
    m: &mut Model,
    p: Placement,
    spec: DeviceSpec,
    gpus: &mut cascade_gpu::Result<Vec<GpuInfo>>,
    need: Footprint,
) -> Result<()> {
    let Placement::Cuda(info) = p else {
        return Ok(());
    };
    match open_and_upload(m, &info) {
        Ok(()) => {
            if let Ok(list) = gpus {
                if let Some(g) = list.iter_mut().find(|g| g.index == info.index) {
                    g.free_bytes = g.free_bytes.saturating_sub(need.total());
                }
            }
            Ok(())
        }
        Err(e) if spec == DeviceSpec::Auto => {
            tracing::warn!("cuda:{} unusable, running on the CPU: {e}", info.index);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(feature = "cuda")]
fn open_and_upload(m: &mut Model, info: &GpuInfo) -> std::result::Result<(), GpuError> {
    let dev = cascade_gpu::Device::cuda(info.index)?;
    m.place_on(&dev)
        .map_err(|e| GpuError::Driver(e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn open_and_upload(_m: &mut Model, _info: &GpuInfo) -> std::result::Result<(), GpuError> {
    Err(GpuError::NotBuilt)
}
