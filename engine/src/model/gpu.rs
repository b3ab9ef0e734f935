//! The backend seam: a model placed on a GPU runs its forward passes there (weights uploaded
//! once, keys and values in a device pool with the same block ids the scheduler hands out);
//! everything above `Model::forward_batch` (the scheduler, speculation, sampling) is unchanged.

#[cfg(any(feature = "cuda", feature = "shim"))]
mod on {
    use std::sync::Mutex;

    use cascade_gpu::model::{
        GpuKv, GpuModel, GpuSeq, LayerSource, ModelSource, PassOut, RowReduce, Workspace,
    };
    use cascade_gpu::Device;

    use crate::error::{EngineError, Result};
    use crate::kv_cache::KvStorage;
    use crate::model::{Model, Outputs, Reduce, SeqInput};

    // A device's padding of a short top-k row is the sampler's.
    const _: () = assert!(cascade_gpu::model::NO_ID == crate::sampler::NO_CANDIDATE);

    /// A model's weights on a device, and the buffers its passes reuse.
    pub(crate) struct OnDevice {
        pub(crate) model: GpuModel,
        ws: Mutex<Workspace>,
    }

    /// A storage's keys and values on the device.
    pub(crate) struct DeviceKv(pub(crate) GpuKv);

    impl DeviceKv {
        pub(crate) fn copy_positions(&self, from: u32, to: u32, n: usize) -> Result<()> {
            Ok(self.0.copy_positions(from, to, n)?)
        }
    }

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
                valid: &self.valid,
            };
            let mut model = GpuModel::upload(dev, &src)?;
            if let Some(sub) = &self.output_subset {
                model.restrict_output(&sub.ids, &sub.data, self.subset_extras())?;
            }
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

        /// Restricts the device's output layer as the CPU's (`restrict_output`).
        pub(crate) fn restrict_device_output(&mut self) -> Result<()> {
            let extras = self.subset_extras();
            if let (Some(d), Some(sub)) = (self.device.as_mut(), &self.output_subset) {
                d.model.restrict_output(&sub.ids, &sub.data, extras)?;
            }
            Ok(())
        }

        pub(crate) fn device_prompt_kernels_differ(&self) -> bool {
            self.device
                .as_ref()
                .is_some_and(|d| d.model.prompt_kernels_differ())
        }

        /// What the CUDA graphs of this model's passes on its device did (`None` on the CPU).
        pub fn device_graph_stats(&self) -> Option<cascade_gpu::graph::GraphStats> {
            let d = self.device.as_ref()?;
            Some(d.ws.lock().unwrap_or_else(|e| e.into_inner()).graph_stats())
        }

        /// Turns CUDA graphs on or off for this model's small passes on its device (on unless
        /// `CASCADE_GPU_GRAPHS=0`).
        pub fn set_device_graphs(&mut self, on: bool) {
            if let Some(d) = self.device.as_mut() {
                d.model.set_graphs(on);
            }
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
            out: &mut Outputs,
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
                    reduce: match q.reduce {
                        Reduce::Logits => RowReduce::Whole,
                        Reduce::Argmax => RowReduce::Argmax,
                        Reduce::TopK(k) => RowReduce::TopK(k),
                    },
                    extra: q.extra,
                    prompt: q.prompt,
                })
                .collect();
            let mut ws = d.ws.lock().unwrap_or_else(|e| e.into_inner());
            let rows = PassOut {
                logits: &mut out.logits,
                argmax: &mut out.argmax,
                top: &mut out.top,
            };
            Ok(d.model.forward_batch(&pool.0, &gseqs, &mut ws, rows)?)
        }
    }
}

#[cfg(not(any(feature = "cuda", feature = "shim")))]
mod on {
    use crate::error::Result;
    use crate::kv_cache::KvStorage;
    use crate::model::{Model, Outputs, SeqInput};

    /// Built without a GPU backend: no model is ever on a device.
    pub(crate) enum OnDevice {}

    #[derive(Debug)]
    pub(crate) enum DeviceKv {}

    impl DeviceKv {
        pub(crate) fn copy_positions(&self, _from: u32, _to: u32, _n: usize) -> Result<()> {
            match *self {}
        }
    }

    impl Model {
        pub(crate) fn attach_device_kv(&self, _kv: &mut KvStorage) -> Result<()> {
            Ok(())
        }

        pub(crate) fn device_prompt_kernels_differ(&self) -> bool {
            false
        }

        pub(crate) fn restrict_device_output(&mut self) -> Result<()> {
            Ok(())
        }

        pub(crate) fn forward_device(
            &self,
            d: &OnDevice,
            _kv: &KvStorage,
            _seqs: &[SeqInput],
            _out: &mut Outputs,
        ) -> Result<()> {
            match *d {}
        }
    }
}

pub(crate) use on::{DeviceKv, OnDevice};

/// A ragged batch through the device path: two sequences with shuffled, interleaved blocks and
/// different histories, every row's logits against the CPU's for the same batch.
#[cfg(all(test, feature = "shim"))]
mod tests {
    use cascade_weights::{OpenOptions, WeightStore};

    use crate::fixture::{self, FixtureSpec};
    use crate::model::{Logits, Model, Outputs, Reduce, Rows, SeqInput, MAX_REDUCED_TOP_K};
    use crate::sampler::{argmax_valid, top_candidates};
    use crate::scratch::Scratch;

    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// A fixture model on disk (small weights: see tests/gpu_shim.rs on chaotic rows).
    fn fixture_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let spec = FixtureSpec {
            weight_scale: 0.1,
            ..FixtureSpec::default()
        };
        fixture::write(&spec, &path).unwrap();
        (dir, path)
    }

    /// A pool made for another model (another KV width) is refused by the device's pass, not
    /// read and written past its buffers.
    #[test]
    fn a_kv_pool_of_another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, kv_heads: usize| {
            let path = dir.path().join(name);
            let spec = FixtureSpec {
                n_kv_heads: kv_heads,
                weight_scale: 0.1,
                ..FixtureSpec::default()
            };
            fixture::write(&spec, &path).unwrap();
            let mut m = Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
            m.place_on(&cascade_gpu::Device::shim()).unwrap();
            m
        };
        let (wide, narrow) = (load("w.gguf", 4), load("n.gguf", 1));
        assert_ne!(wide.config.kv_dim(), narrow.config.kv_dim());
        let mut kv = narrow.new_storage(4, 4).unwrap();
        let input = SeqInput {
            tokens: &[1, 2, 3],
            table: &[0],
            past: 0,
            want: Logits::Last,
            reduce: Reduce::Logits,
            extra: &[],
            prompt: 3,
        };
        let (mut s, mut out) = (Scratch::default(), Outputs::default());
        let r = wide.forward_batch(&mut kv, &[input], &mut s, &mut out);
        assert!(r.is_err(), "a narrower pool was used");
        // Its own pool works.
        let mut own = wide.new_storage(4, 4).unwrap();
        let input = SeqInput {
            table: &[0],
            ..input
        };
        wide.forward_batch(&mut own, &[input], &mut s, &mut out)
            .unwrap();
    }

    #[test]
    fn a_ragged_batch_on_the_shim_matches_the_cpu() {
        let (_dir, path) = fixture_file();
        let load = || Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
        let cpu = load();
        let mut dev = load();
        dev.place_on(&cascade_gpu::Device::shim()).unwrap();
        let (block, n_blocks) = (4, 12);
        let mut kv_c = cpu.new_storage(block, n_blocks).unwrap();
        let mut kv_d = dev.new_storage(block, n_blocks).unwrap();
        let (ta, tb): (&[u32], &[u32]) = (&[7, 2, 9, 4], &[0, 11, 5, 3]);
        let a: Vec<u32> = (0..9).map(|i| (i * 31 + 3) % 256).collect();
        let b: Vec<u32> = (0..5).map(|i| (i * 17 + 8) % 256).collect();
        let (mut sc, mut sd) = (Scratch::default(), Scratch::default());
        let (mut lc, mut ld) = (Outputs::default(), Outputs::default());
        // Histories: a's first 6 tokens, b's first 2, then one batch with both. a's prompt is its
        // first 6 tokens, b's its first 3: on the shim prompt rows take the tensor-core
        // products, so the second batch mixes both kinds of row, b's within one sequence.
        let first = [
            SeqInput {
                tokens: &a[..6],
                table: ta,
                past: 0,
                want: Logits::None,
                reduce: Reduce::Logits,
                extra: &[],
                prompt: 6,
            },
            SeqInput {
                tokens: &b[..2],
                table: tb,
                past: 0,
                want: Logits::Last,
                reduce: Reduce::Logits,
                extra: &[],
                prompt: 3,
            },
        ];
        cpu.forward_batch(&mut kv_c, &first, &mut sc, &mut lc)
            .unwrap();
        dev.forward_batch(&mut kv_d, &first, &mut sd, &mut ld)
            .unwrap();
        assert!(rel_diff(&lc.logits, &ld.logits) < 0.02);
        let second = [
            SeqInput {
                tokens: &b[2..],
                table: tb,
                past: 2,
                want: Logits::All,
                reduce: Reduce::Logits,
                extra: &[],
                prompt: 3,
            },
            SeqInput {
                tokens: &a[6..],
                table: ta,
                past: 6,
                want: Logits::All,
                reduce: Reduce::Logits,
                extra: &[],
                prompt: 6,
            },
        ];
        cpu.forward_batch(&mut kv_c, &second, &mut sc, &mut lc)
            .unwrap();
        dev.forward_batch(&mut kv_d, &second, &mut sd, &mut ld)
            .unwrap();
        assert_eq!(lc.logits.len(), 6 * cpu.vocab_size());
        let d = rel_diff(&lc.logits, &ld.logits);
        assert!(d < 0.02, "ragged batch logits differ by {d}");

        // A prefix reused to the token: a's first block shared, positions 4 and 5 copied from
        // its second block (2) into block 6; then a[6] from there gives a's logits at 6.
        let v = cpu.vocab_size();
        let a_at_6 = lc.logits[3 * v..4 * v].to_vec();
        let c = |table: &'static [u32]| {
            [SeqInput {
                tokens: &a[6..7],
                table,
                past: 6,
                want: Logits::Last,
                reduce: Reduce::Logits,
                extra: &[],
                prompt: 0,
            }]
        };
        let unfilled = c(&[7, 1]);
        cpu.forward_batch(&mut kv_c, &unfilled, &mut sc, &mut lc)
            .unwrap();
        assert_ne!(
            lc.logits, a_at_6,
            "block 1 holds nothing: the copy must matter"
        );
        kv_c.copy_positions(2, 6, 2).unwrap();
        kv_d.copy_positions(2, 6, 2).unwrap();
        let copied = c(&[7, 6]);
        cpu.forward_batch(&mut kv_c, &copied, &mut sc, &mut lc)
            .unwrap();
        dev.forward_batch(&mut kv_d, &copied, &mut sd, &mut ld)
            .unwrap();
        assert_eq!(
            lc.logits, a_at_6,
            "copied positions are bitwise the computed ones"
        );
        let d = rel_diff(&lc.logits, &ld.logits);
        assert!(d < 0.02, "logits after the device copy differ by {d}");
    }

    /// On a device with tensor cores, prompt rows take those products and generated rows the
    /// dp4a ones: each kind is bitwise the same alone, chunked or batched with the other kind,
    /// the two kinds differ in their last bits (so the routing happens), and both are within the
    /// 8-bit paths' error of the CPU.
    #[test]
    fn prompt_and_generated_rows_keep_their_own_bits_in_any_batch() {
        // K-quant layers whose products are not negligible next to the residual stream: with the
        // default fixture's (scaled by 0.1) the two kernels' last bits vanish in the residual
        // additions, so the test could not tell the kernels apart.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.gguf");
        let spec = FixtureSpec {
            dtype: cascade_weights::DType::Q4K,
            hidden: 256,
            ffn: 512,
            weight_scale: 0.2,
            ..FixtureSpec::default()
        };
        fixture::write(&spec, &path).unwrap();
        let load = || Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
        let cpu = load();
        let mut dev = load();
        dev.place_on(&cascade_gpu::Device::shim()).unwrap();
        assert!(
            dev.prompt_kernels_differ(),
            "the shim runs the tensor-core kernels"
        );
        assert!(!cpu.prompt_kernels_differ());
        let a: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 256).collect();
        let b: Vec<u32> = (0..8).map(|i| (i * 19 + 4) % 256).collect();
        let seq = |tokens, table, past, prompt| SeqInput {
            tokens,
            table,
            past,
            want: Logits::All,
            reduce: Reduce::Logits,
            extra: &[],
            prompt,
        };
        let (ta, tb): (&[u32], &[u32]) = (&[3, 0, 5, 1, 7], &[2, 6]);
        let run = |m: &Model, steps: &[Vec<SeqInput>]| -> Vec<Vec<f32>> {
            let mut kv = m.new_storage(8, 8).unwrap();
            let mut s = Scratch::default();
            steps
                .iter()
                .map(|batch| {
                    let mut out = Outputs::default();
                    m.forward_batch(&mut kv, batch, &mut s, &mut out).unwrap();
                    out.logits
                })
                .collect()
        };
        let v = cpu.vocab_size();
        let alone = run(&dev, &[vec![seq(&a, ta, 0, 40)]]).remove(0);
        // Chunked, the second chunk beside b's generated rows (b's first 5 tokens its prompt).
        let mixed = run(
            &dev,
            &[
                vec![seq(&a[..17], ta, 0, 40), seq(&b[..5], tb, 0, 5)],
                vec![seq(&b[5..], tb, 5, 5), seq(&a[17..], ta, 17, 40)],
            ],
        );
        assert!(
            mixed[0][..17 * v] == alone[..17 * v] && mixed[1][3 * v..] == alone[17 * v..],
            "a prompt's rows changed with the batch or the chunks"
        );
        let b_alone = run(
            &dev,
            &[vec![seq(&b[..5], tb, 0, 5)], vec![seq(&b[5..], tb, 5, 5)]],
        );
        assert!(
            b_alone[1] == mixed[1][..3 * v],
            "generated rows changed beside a prompt"
        );
        let generated = run(&dev, &[vec![seq(&a, ta, 0, 0)]]).remove(0);
        let moved = generated.iter().zip(&alone).filter(|(x, y)| x != y).count();
        assert!(moved > 0, "prompt rows took the generated rows' kernels");
        let on_cpu = run(&cpu, &[vec![seq(&a, ta, 0, 40)]]).remove(0);
        for (kind, rows) in [("prompt", &alone), ("generated", &generated)] {
            let d = rel_diff(&on_cpu, rows);
            println!(
                "{kind} rows: {d:.1e} from the CPU's; {moved} logits differ between the kinds"
            );
            assert!(d < 0.02, "{kind} rows differ from the CPU by {d}");
        }
    }

    /// Greedy rows reduced on the device (and on the CPU) are the argmax of the same rows
    /// returned whole, next to a sequence whose rows come back whole and unchanged; a mask that
    /// hides each row's choice moves it.
    #[test]
    fn rows_reduced_to_their_argmax_are_the_greedy_choice_of_the_whole_rows() {
        let (_dir, path) = fixture_file();
        let load = || Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
        let (mut cpu, mut dev) = (load(), load());
        let a: Vec<u32> = (0..7).map(|i| (i * 29 + 5) % 256).collect();
        let b: Vec<u32> = (0..4).map(|i| (i * 13 + 1) % 256).collect();
        let batch = |ra: Reduce, rb: Reduce| {
            [
                SeqInput {
                    tokens: &a,
                    table: &[0, 1],
                    past: 0,
                    want: Logits::All,
                    reduce: ra,
                    extra: &[],
                    prompt: 0,
                },
                SeqInput {
                    tokens: &b,
                    table: &[2],
                    past: 0,
                    want: Logits::From(1),
                    reduce: rb,
                    extra: &[],
                    prompt: 0,
                },
            ]
        };
        let v = cpu.vocab_size();
        // The ids the unmasked rows choose may not be chosen (as a tokenizer's padding rows).
        let mut out = Outputs::default();
        let mut kv = cpu.new_storage(4, 3).unwrap();
        let (w, x) = (Reduce::Logits, Reduce::Argmax);
        cpu.forward_batch(&mut kv, &batch(x, x), &mut Scratch::default(), &mut out)
            .unwrap();
        for &id in &out.argmax {
            cpu.valid[id as usize] = false;
        }
        dev.valid = cpu.valid.clone();
        dev.place_on(&cascade_gpu::Device::shim()).unwrap();
        for m in [&cpu, &dev] {
            let mut kv = m.new_storage(4, 3).unwrap();
            let mut s = Scratch::default();
            let (mut whole, mut mixed) = (Outputs::default(), Outputs::default());
            m.forward_batch(&mut kv, &batch(w, w), &mut s, &mut whole)
                .unwrap();
            m.forward_batch(&mut kv, &batch(x, w), &mut s, &mut mixed)
                .unwrap();
            let parts = mixed.split([(7, x), (3, w)], v);
            let (Rows::Argmax(ids), Rows::Logits(rows_b)) = (parts[0], parts[1]) else {
                panic!("a reduced, b whole");
            };
            assert_eq!(ids.len(), 7);
            assert_eq!(
                rows_b,
                &whole.logits[7 * v..],
                "b's rows unchanged beside a's"
            );
            let mut moved = 0;
            for (r, &id) in ids.iter().enumerate() {
                let row = &whole.logits[r * v..(r + 1) * v];
                assert_eq!(Some(id), argmax_valid(row, &m.valid), "row {r}");
                assert!(m.valid[id as usize], "a masked id chosen");
                moved += (argmax_valid(row, &vec![true; v]) != Some(id)) as usize;
            }
            assert!(moved > 0, "the mask never mattered: the test cannot tell");
        }
    }

    /// Decode steps as CUDA graphs give bitwise the logits of the same steps launched kernel by
    /// kernel: the graph of a decode step is reused while its shapes hold, updated in place when
    /// the attention's key splits grow (past 256 keys), and a prompt's large pass runs directly.
    #[test]
    fn decode_steps_as_graphs_are_bitwise_the_steps_launched_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let spec = FixtureSpec {
            weight_scale: 0.1,
            context_length: 512,
            ..FixtureSpec::default()
        };
        fixture::write(&spec, &path).unwrap();
        let load = || {
            let mut m = Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
            m.place_on(&cascade_gpu::Device::shim()).unwrap();
            m
        };
        let (mut direct, graphs) = (load(), load());
        direct.set_device_graphs(false);
        let prompt: Vec<u32> = (0..250).map(|i| (i * 31 + 7) % 256).collect();
        let steps = 12;
        let run = |m: &Model| {
            let mut cache = m.new_cache(prompt.len() + steps + 1).unwrap();
            let mut rows = vec![m.forward_prompt(&prompt, &mut cache, Logits::Last).unwrap()];
            for t in 0..steps {
                let tok = [(t as u32 * 17 + 3) % 256];
                rows.push(m.forward(&tok, &mut cache, Logits::Last).unwrap());
            }
            rows
        };
        let (a, b) = (run(&direct), run(&graphs));
        for (t, (x, y)) in a.iter().zip(&b).enumerate() {
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "step {t} differs with graphs");
        }
        let none = direct.device_graph_stats().unwrap();
        assert_eq!(none.reused + none.updated + none.instantiated, 0);
        let g = graphs.device_graph_stats().unwrap();
        println!("graphs: {g:?}");
        assert_eq!(g.instantiated, 1, "{g:?}");
        assert!(g.updated >= 1, "the split change updates the graph: {g:?}");
        assert_eq!(
            g.reused + g.updated + 1,
            steps as u64,
            "every decode step: {g:?}"
        );
        assert!(g.reused >= steps as u64 - 3, "{g:?}");
    }

    /// Rows reduced to their top k on the device (and on the CPU) are the candidates of the same
    /// rows returned whole, bit for bit, in a batch that mixes every kind of row and two values
    /// of k; a mask that hides each row's best id keeps it out.
    #[test]
    fn rows_reduced_to_their_top_k_are_the_candidates_of_the_whole_rows() {
        let (_dir, path) = fixture_file();
        let load = || Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
        let (mut cpu, mut dev) = (load(), load());
        let a: Vec<u32> = (0..7).map(|i| (i * 29 + 5) % 256).collect();
        let b: Vec<u32> = (0..4).map(|i| (i * 13 + 1) % 256).collect();
        let c: Vec<u32> = (0..3).map(|i| (i * 7 + 100) % 256).collect();
        let tables = [[0u32, 1], [2, 3], [4, 5]];
        let batch = |r: [Reduce; 3]| {
            [(&a, Logits::All), (&b, Logits::From(1)), (&c, Logits::Last)]
                .into_iter()
                .zip(&tables)
                .zip(r)
                .map(|(((tokens, want), table), reduce)| SeqInput {
                    tokens,
                    table,
                    past: 0,
                    want,
                    reduce,
                    extra: &[],
                    prompt: 0,
                })
                .collect::<Vec<_>>()
        };
        let v = cpu.vocab_size();
        let w = Reduce::Logits;
        let mut out = Outputs::default();
        let mut kv = cpu.new_storage(4, 6).unwrap();
        let x = Reduce::Argmax;
        cpu.forward_batch(
            &mut kv,
            &batch([x, x, x]),
            &mut Scratch::default(),
            &mut out,
        )
        .unwrap();
        for &id in &out.argmax {
            cpu.valid[id as usize] = false;
        }
        dev.valid = cpu.valid.clone();
        dev.place_on(&cascade_gpu::Device::shim()).unwrap();
        let (ka, kc) = (Reduce::TopK(5), Reduce::TopK(MAX_REDUCED_TOP_K));
        for m in [&cpu, &dev] {
            let mut kv = m.new_storage(4, 6).unwrap();
            let mut s = Scratch::default();
            let (mut whole, mut mixed) = (Outputs::default(), Outputs::default());
            m.forward_batch(&mut kv, &batch([w, w, w]), &mut s, &mut whole)
                .unwrap();
            m.forward_batch(&mut kv, &batch([ka, x, kc]), &mut s, &mut mixed)
                .unwrap();
            assert!(mixed.logits.is_empty());
            let parts = mixed.split([(7, ka), (3, x), (1, kc)], v);
            let (Rows::TopK { k: 5, cands: ta }, Rows::Argmax(ib), Rows::TopK { cands: tc, .. }) =
                (parts[0], parts[1], parts[2])
            else {
                panic!("a and c to their top k, b to its argmax");
            };
            let bits =
                |c: &[(u32, f32)]| c.iter().map(|e| (e.0, e.1.to_bits())).collect::<Vec<_>>();
            let row = |r: usize| &whole.logits[r * v..(r + 1) * v];
            for r in 0..7 {
                let want = top_candidates(row(r), &m.valid, 5);
                assert_eq!(bits(&ta[r * 5..(r + 1) * 5]), bits(&want), "a's row {r}");
                assert!(ta[r * 5..(r + 1) * 5].iter().all(|e| m.valid[e.0 as usize]));
            }
            for (r, &id) in ib.iter().enumerate() {
                assert_eq!(Some(id), argmax_valid(row(7 + r), &m.valid), "b's row {r}");
            }
            let want = top_candidates(row(10), &m.valid, MAX_REDUCED_TOP_K);
            assert_eq!(bits(tc), bits(&want), "c's row");
            assert!(tc.windows(2).all(|p| p[0].1 >= p[1].1), "descending");
        }
    }

    /// The restricted output layer (FR-Spec) on the device: the ids outside the subset and the
    /// sequence's own context tokens are -inf exactly where the CPU's are, the rest within the
    /// 8-bit paths' error; a restriction made after placing the model reaches the device too.
    #[test]
    fn a_restricted_output_layer_on_the_shim_matches_the_cpu() {
        let (_dir, path) = fixture_file();
        let load = || Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
        let ids: Vec<u32> = (0..256).step_by(5).collect();
        let (mut cpu, mut dev) = (load(), load());
        cpu.restrict_output(&ids).unwrap();
        dev.place_on(&cascade_gpu::Device::shim()).unwrap();
        dev.restrict_output(&ids).unwrap();
        let (a, b) = ([3u32, 151, 201, 9, 77], [7u32, 11]);
        let (ea, eb) = ([3u32, 9, 77, 151, 201], [7u32, 11, 12]);
        let batch = |r: Reduce| {
            [
                SeqInput {
                    tokens: &a,
                    table: &[0, 1],
                    past: 0,
                    want: Logits::All,
                    reduce: r,
                    extra: &ea,
                    prompt: 0,
                },
                SeqInput {
                    tokens: &b,
                    table: &[2],
                    past: 0,
                    want: Logits::Last,
                    reduce: Reduce::Logits,
                    extra: &eb,
                    prompt: 0,
                },
            ]
        };
        let run = |m: &Model, r: Reduce| {
            let mut kv = m.new_storage(4, 3).unwrap();
            let mut out = Outputs::default();
            m.forward_batch(&mut kv, &batch(r), &mut Scratch::default(), &mut out)
                .unwrap();
            out
        };
        let (c, d) = (run(&cpu, Reduce::Logits), run(&dev, Reduce::Logits));
        let v = cpu.vocab_size();
        assert_eq!(c.logits.len(), 6 * v);
        for (r, (rc, rd)) in c.logits.chunks(v).zip(d.logits.chunks(v)).enumerate() {
            let own: &[u32] = if r < 5 { &ea } else { &eb };
            for id in 0..v {
                let computed = ids.contains(&(id as u32)) || own.contains(&(id as u32));
                assert_eq!(rc[id].is_finite(), computed, "cpu row {r} id {id}");
                assert_eq!(rd[id].is_finite(), computed, "device row {r} id {id}");
            }
            let fin =
                |x: &[f32]| -> Vec<f32> { x.iter().copied().filter(|v| v.is_finite()).collect() };
            let diff = rel_diff(&fin(rc), &fin(rd));
            assert!(diff < 0.02, "row {r} differs by {diff}");
        }
        // Past the 60-odd computed ids, a top 64 takes -inf ones, lowest ids first.
        let top = run(&dev, Reduce::TopK(MAX_REDUCED_TOP_K));
        for (r, got) in top.top.chunks(MAX_REDUCED_TOP_K).enumerate() {
            let row = &d.logits[r * v..(r + 1) * v];
            let want = top_candidates(row, &dev.valid, MAX_REDUCED_TOP_K);
            assert!(want.iter().any(|c| c.1 == f32::NEG_INFINITY));
            let bits =
                |c: &[(u32, f32)]| c.iter().map(|e| (e.0, e.1.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(got), bits(&want), "top-k row {r}");
        }
        let reduced = run(&dev, Reduce::Argmax);
        assert_eq!(reduced.argmax.len(), 5, "a's five rows reduced");
        for (r, &id) in reduced.argmax.iter().enumerate() {
            let row = &d.logits[r * v..(r + 1) * v];
            assert_eq!(Some(id), argmax_valid(row, &dev.valid), "reduced row {r}");
        }
        assert_eq!(reduced.logits, d.logits[5 * v..], "b's row whole");
    }
}
