//! The backend seam: a model placed on a GPU runs its forward passes there (weights uploaded
//! once, keys and values in a device pool with the same block ids the scheduler hands out);
//! everything above `Model::forward_batch` (the scheduler, speculation, sampling) is unchanged.

#[cfg(any(feature = "cuda", feature = "shim"))]
mod on {
    use std::sync::Mutex;

    use cascade_gpu::model::{GpuKv, GpuModel, GpuSeq, LayerSource, ModelSource, Workspace};
    use cascade_gpu::Device;

    use crate::error::{EngineError, Result};
    use crate::kv_cache::KvStorage;
    use crate::model::{Model, SeqInput};

    /// A model's weights on a device, and the buffers its passes reuse.
    pub(crate) struct OnDevice {
        pub(crate) model: GpuModel,
        ws: Mutex<Workspace>,
    }

    /// A storage's keys and values on the device.
    pub(crate) struct DeviceKv(pub(crate) GpuKv);

    impl std::fmt::Debug for DeviceKv {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "DeviceKv({} blocks)", self.0.n_blocks())
        }
    }

    impl Model {
        /// Uploads the weights to `dev`; from then on every forward pass runs there.
        pub fn place_on(&mut self, dev: &Device) -> Result<()> {
            let layers = self
                .layers
                .iter()
                .map(|l| LayerSource {
                    attn_norm: &l.attn_norm,
                    ffn_norm: &l.ffn_norm,
                    wq: &l.wq,
                    wk: &l.wk,
                    wv: &l.wv,
                    wo: &l.wo,
                    bq: l.bq.as_deref(),
                    bk: l.bk.as_deref(),
                    bv: l.bv.as_deref(),
                    w_gate: &l.w_gate,
                    w_up: &l.w_up,
                    w_down: &l.w_down,
                })
                .collect();
            let src = ModelSource {
                config: &self.config,
                embd: &self.embd,
                output: &self.output,
                output_norm: &self.output_norm,
                layers,
            };
            let model = GpuModel::upload(dev, &src)?;
            tracing::info!(
                "{}: {:.1} MiB of weights on the {}",
                self.files.path.display(),
                model.weight_bytes as f64 / (1 << 20) as f64,
                if dev.is_shim() { "host shim" } else { "GPU" }
            );
            self.device = Some(Box::new(OnDevice {
                model,
                ws: Mutex::new(Workspace::default()),
            }));
            Ok(())
        }

        /// Gives `kv` its device pool when this model runs on a device.
        pub(crate) fn attach_device_kv(&self, kv: &mut KvStorage) -> Result<()> {
            if let Some(d) = &self.device {
                let pool = d.model.new_kv(kv.n_blocks(), kv.block())?;
                kv.device = Some(DeviceKv(pool));
            }
            Ok(())
        }

        /// The forward pass on the device (see `forward_batch`).
        pub(crate) fn forward_device(
            &self,
            d: &OnDevice,
            kv: &KvStorage,
            seqs: &[SeqInput],
            logits: &mut Vec<f32>,
        ) -> Result<()> {
            let pool = kv.device.as_ref().ok_or(EngineError::InvalidParam {
                name: "KV cache",
                reason: "made before the model moved to its device".into(),
            })?;
            let gseqs: Vec<GpuSeq> = seqs
                .iter()
                .map(|q| GpuSeq {
                    tokens: q.tokens,
                    table: q.table,
                    past: q.past,
                    want: q.want.rows(q.tokens.len()),
                })
                .collect();
            let mut ws = d.ws.lock().unwrap_or_else(|e| e.into_inner());
            Ok(d.model.forward_batch(&pool.0, &gseqs, &mut ws, logits)?)
        }
    }
}

#[cfg(not(any(feature = "cuda", feature = "shim")))]
mod on {
    use crate::error::Result;
    use crate::kv_cache::KvStorage;
    use crate::model::{Model, SeqInput};

    /// Built without a GPU backend: no model is ever on a device.
    pub(crate) enum OnDevice {}

    #[derive(Debug)]
    pub(crate) enum DeviceKv {}

    impl Model {
        pub(crate) fn attach_device_kv(&self, _kv: &mut KvStorage) -> Result<()> {
            Ok(())
        }

        pub(crate) fn forward_device(
            &self,
            d: &OnDevice,
            _kv: &KvStorage,
            _seqs: &[SeqInput],
            _logits: &mut Vec<f32>,
        ) -> Result<()> {
            match *d {}
        }
    }
}

pub(crate) use on::{DeviceKv, OnDevice};
