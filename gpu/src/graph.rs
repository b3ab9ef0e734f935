//! CUDA graphs for small passes (decode and verification rows), where launching several hundred
//! kernels one by one costs more host time than the GPU spends on them.
//!
//! A pass's launches are first *recorded*: [`Device::launch`] on the recording thread stores the
//! kernel, its geometry and its argument values instead of issuing them, and any copy is an error
//! (in a graph it would not be ordered with the launches). The list is then run as one graph:
//!
//! - the same list as an earlier pass (same kernels, geometry and arguments: decode steps of one
//!   batch, whose buffers and shapes are stable) launches that pass's instantiated graph as is;
//! - the same kernels with other arguments or grids (another context length's attention splits,
//!   another batch of the same size) are captured and the instantiated graph updated in place;
//! - otherwise a new graph is captured and instantiated (a few are kept, the least recently used
//!   dropped).
//!
//! On the host shim the same decisions are made and "launching the graph" replays the recorded
//! list, so the shim tests run every pass the way a GPU runs its graph: launches issued later than
//! the host code that made them, with the argument values they had then.

use std::cell::RefCell;

use crate::device::{Args, Device, GraphExec, Launch};
use crate::error::{GpuError, Result};

/// One recorded launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) name: &'static str,
    pub(crate) launch: Launch,
    pub(crate) args: Vec<u64>,
}

impl Recorded {
    /// Calls `f` with the launch's `kernelParams` (one pointer per argument slot, valid during
    /// the call), as `cuLaunchKernel` and the shim take them.
    pub(crate) fn with_params<R>(&self, f: impl FnOnce(&mut [*mut std::ffi::c_void]) -> R) -> R {
        let mut slots = self.args.clone();
        let mut params: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        f(&mut params)
    }
}

thread_local! {
    /// The launches of the pass this thread is recording, if it is.
    static RECORDING: RefCell<Option<Vec<Recorded>>> = const { RefCell::new(None) };
}

/// Records the launch when this thread is recording a graph; else hands `args` back.
pub(crate) fn record(name: &'static str, launch: Launch, args: Args) -> Option<Args> {
    RECORDING.with(|r| match r.borrow_mut().as_mut() {
        Some(list) => {
            list.push(Recorded {
                name,
                launch,
                args: args.slots,
            });
            None
        }
        None => Some(args),
    })
}

/// An error when this thread is recording: `what` (a copy, a wait) cannot be part of a graph.
pub(crate) fn refuse_while_recording(what: &str) -> Result<()> {
    match RECORDING.with(|r| r.borrow().is_some()) {
        true => Err(GpuError::Unsupported(format!(
            "{what} while recording a CUDA graph (only launches may be recorded)"
        ))),
        false => Ok(()),
    }
}

/// The launches `f` makes, recorded instead of issued.
fn recorded(f: impl FnOnce() -> Result<()>) -> Result<Vec<Recorded>> {
    RECORDING.with(|r| {
        let mut r = r.borrow_mut();
        if r.is_some() {
            return Err(GpuError::Unsupported("graphs do not nest".into()));
        }
        *r = Some(Vec::new());
        Ok(())
    })?;
    // Ends the recording however `f` leaves, a panic included: a thread left recording would
    // record (and never issue) every later launch of every model on it.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            RECORDING.with(|r| r.borrow_mut().take());
        }
    }
    let stop = Stop;
    let result = f();
    let list = RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    drop(stop);
    result.map(|()| list)
}

/// What running passes as graphs did, pass by pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Passes that launched an instantiated graph unchanged.
    pub reused: u64,
    /// Passes whose graph was captured and an instantiated one updated in place.
    pub updated: u64,
    /// Passes whose graph was captured and newly instantiated.
    pub instantiated: u64,
    /// Kernels the graphs held, over every pass.
    pub kernels: u64,
}

/// Graphs kept at once (shapes of passes seen recently: decode batches of a few sizes, their
/// verification windows).
const KEEP: usize = 8;

struct Entry {
    list: Vec<Recorded>,
    /// The instantiated graph (none on the shim).
    exec: Option<GraphExec>,
    last_used: u64,
}

/// The graphs of one model's passes (kept in its workspace).
#[derive(Default)]
pub struct Graphs {
    entries: Vec<Entry>,
    clock: u64,
    pub stats: GraphStats,
}

/// Whether two lists launch the same kernels in the same order (what an update may change is
/// the rest: geometry and arguments).
fn same_kernels(a: &[Recorded], b: &[Recorded]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name == y.name)
}

impl Device {
    /// Runs the launches `f` makes as one graph (see the module's text); `f` may only launch.
    pub fn run_graph(&self, graphs: &mut Graphs, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let list = recorded(f)?;
        let r = self.run_recorded(graphs, list);
        if r.is_err() {
            // Nothing from a failure is kept (on a GPU the context may be unusable anyway).
            graphs.entries.clear();
        }
        r
    }

    fn run_recorded(&self, graphs: &mut Graphs, list: Vec<Recorded>) -> Result<()> {
        if list.is_empty() {
            return Ok(());
        }
        graphs.clock += 1;
        graphs.stats.kernels += list.len() as u64;
        let now = graphs.clock;
        if let Some(e) = graphs.entries.iter_mut().find(|e| e.list == list) {
            e.last_used = now;
            graphs.stats.reused += 1;
            return self.launch_graph(e.exec.as_ref(), &e.list);
        }
        if let Some(e) = graphs
            .entries
            .iter_mut()
            .find(|e| same_kernels(&e.list, &list))
        {
            let updated = self.update_graph(e.exec.as_mut(), &list)?;
            e.list = list;
            e.last_used = now;
            if updated {
                graphs.stats.updated += 1;
            } else {
                e.exec = self.instantiate_graph(&e.list)?;
                graphs.stats.instantiated += 1;
            }
            return self.launch_graph(e.exec.as_ref(), &e.list);
        }
        if graphs.entries.len() >= KEEP {
            let oldest = (0..graphs.entries.len())
                .min_by_key(|&i| graphs.entries[i].last_used)
                .expect("entries are not empty");
            graphs.entries.swap_remove(oldest);
        }
        let exec = self.instantiate_graph(&list)?;
        graphs.stats.instantiated += 1;
        graphs.entries.push(Entry {
            list,
            exec,
            last_used: now,
        });
        let e = graphs.entries.last().expect("just pushed");
        self.launch_graph(e.exec.as_ref(), &e.list)
    }
}

#[cfg(all(test, feature = "shim"))]
mod tests {
    use super::*;
    use crate::kernels as k;

    /// `y[i] += x[i]` `times` times, each a launch.
    fn adds(
        d: &Device,
        x: &crate::DevBuf,
        y: &crate::DevBuf,
        n: usize,
        times: usize,
    ) -> Result<()> {
        for _ in 0..times {
            d.launch(
                "add_inplace",
                k::elementwise(n as u32),
                Args::new().buf(y).buf(x).int(n),
            )?;
        }
        Ok(())
    }

    #[test]
    fn a_graph_runs_its_launches_later_with_the_values_they_had() {
        let d = Device::shim();
        let n = 1000;
        let x = d.upload(&vec![1f32; n]).unwrap();
        let y = d.upload(&vec![0f32; n]).unwrap();
        let mut g = Graphs::default();
        let mut out = vec![0f32; n];
        // Recorded, not run: nothing happens until the graph runs, then both adds.
        d.run_graph(&mut g, || {
            adds(&d, &x, &y, n, 2)?;
            let mut peek = [0f32];
            assert!(d.read(&y, 0, &mut peek).is_err(), "a copy inside a graph");
            assert!(d.write(&y, 0, &[5f32]).is_err(), "a copy inside a graph");
            Ok(())
        })
        .unwrap();
        d.read(&y, 0, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 2.0));
        assert_eq!((g.stats.instantiated, g.stats.reused), (1, 0));
        // The same launches: the graph is reused; other arguments: updated.
        d.run_graph(&mut g, || adds(&d, &x, &y, n, 2)).unwrap();
        d.run_graph(&mut g, || adds(&d, &x, &y, n / 2, 2)).unwrap();
        assert_eq!(
            (g.stats.instantiated, g.stats.reused, g.stats.updated),
            (1, 1, 1)
        );
        d.read(&y, 0, &mut out).unwrap();
        assert!(out[..n / 2].iter().all(|&v| v == 6.0) && out[n / 2..].iter().all(|&v| v == 4.0));
        // Other kernels: a new graph; the least recently used goes past KEEP.
        for t in 3..3 + KEEP {
            d.run_graph(&mut g, || adds(&d, &x, &y, n, t)).unwrap();
        }
        assert_eq!(g.entries.len(), KEEP);
        assert_eq!(g.stats.instantiated, 1 + KEEP as u64);
        // A pass that fails while recording, or whose graph fails, fails; recording ends, and
        // no graph is kept from a failure.
        let bad = d.run_graph(&mut g, || Err(GpuError::BadBatch("no".into())));
        assert!(bad.is_err());
        assert!(d.read(&y, 0, &mut out).is_ok(), "recording ended");
        let bad = d.run_graph(&mut g, || {
            d.launch("no_such_kernel", k::elementwise(1), Args::new())
        });
        assert!(bad.is_err());
        assert!(g.entries.is_empty());
        assert!(d.read(&y, 0, &mut out).is_ok(), "recording ended");
    }

    /// A panic while recording (a bug in a launcher) ends the recording too: the thread's next
    /// launches run, copies are allowed.
    #[test]
    fn a_panic_while_recording_leaves_the_thread_not_recording() {
        let d = Device::shim();
        let n = 64;
        let x = d.upload(&vec![1f32; n]).unwrap();
        let y = d.upload(&vec![0f32; n]).unwrap();
        let mut g = Graphs::default();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = d.run_graph(&mut g, || -> Result<()> {
                adds(&d, &x, &y, n, 1)?;
                panic!("a launcher's bug")
            });
        }));
        assert!(caught.is_err());
        let mut out = vec![0f32; n];
        d.read(&y, 0, &mut out).expect("copies work again");
        assert!(
            out.iter().all(|&v| v == 0.0),
            "the recorded launch never ran"
        );
        adds(&d, &x, &y, n, 1).unwrap();
        d.read(&y, 0, &mut out).unwrap();
        assert!(
            out.iter().all(|&v| v == 1.0),
            "a launch after it runs at once"
        );
    }
}
