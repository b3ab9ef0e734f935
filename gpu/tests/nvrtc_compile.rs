//! Every kernel compiles with NVRTC for sm_75, sm_80 and sm_90 (no GPU needed: Turing's T4, Ampere
//! and Hopper; the tensor-core products use other instructions on sm_75), and the hot ones do not
//! spill registers. Prints a table of registers / spills / shared memory per kernel and arch.
//!
//! Without NVRTC (scripts/setup-cuda installs it) the test fails under CI (`CI` set to a true
//! value) and is skipped with its reason otherwise.
#![cfg(feature = "cuda")]

use cascade_gpu::kernels::{is_hot, KERNELS};
use cascade_gpu::nvrtc;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

#[test]
fn every_kernel_compiles_for_sm75_sm80_and_sm90_without_hot_spills() {
    let paths = match nvrtc::load() {
        Ok(p) => p,
        Err(e) if in_ci() => panic!("NVRTC is required in CI: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let version = nvrtc::version().unwrap();
    println!(
        "NVRTC {}.{} from {}, headers {}",
        version.0,
        version.1,
        paths.nvrtc.display(),
        paths.include.display()
    );
    let mut problems = Vec::new();
    const ARCHS: [u32; 3] = [75, 80, 90];
    let mut header = format!("{:<22}", "kernel");
    for arch in ARCHS {
        header.push_str(&format!(
            " {:>5} {:>7} {:>7} {:>7}  ",
            format!("{arch}:r"),
            "st.sp",
            "ld.sp",
            "smem"
        ));
    }
    let mut table = vec![header];
    let mut per_arch = Vec::new();
    for arch in ARCHS {
        // Uncached: the test is about what NVRTC does with these sources now.
        let c = nvrtc::compile_uncached(arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.ptx.contains(".entry mmvq_q4_0"),
            "sm_{arch}: PTX lacks the kernels"
        );
        assert!(c.cubin.starts_with(b"\x7fELF"), "sm_{arch}: no CUBIN");
        for w in c.log.lines().filter(|l| l.contains("warning")) {
            println!("sm_{arch} {w}");
        }
        for k in KERNELS {
            match c.resources.iter().find(|r| r.name == *k) {
                None => problems.push(format!("sm_{arch}: no ptxas report for {k}")),
                Some(r) if is_hot(k) && (r.spill_stores > 0 || r.spill_loads > 0) => {
                    problems.push(format!(
                        "sm_{arch}: hot kernel {k} spills ({} bytes stored, {} loaded)",
                        r.spill_stores, r.spill_loads
                    ))
                }
                Some(_) => {}
            }
        }
        per_arch.push(c);
    }
    for k in KERNELS {
        let mut row = format!("{k:<22}");
        for c in &per_arch {
            if let Some(r) = c.resources.iter().find(|r| r.name == *k) {
                row.push_str(&format!(
                    " {:>5} {:>7} {:>7} {:>7}  ",
                    r.registers, r.spill_stores, r.spill_loads, r.shared
                ));
            }
        }
        table.push(row);
    }
    println!("{:>31}{:>36}", "sm_80", "sm_90");
    println!("{}", table.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_cache_returns_what_was_compiled() {
    if nvrtc::load().is_err() {
        // The test above reports (or fails on) a missing NVRTC.
        return;
    }
    // The user's cache (~/.cache/cascade/cuda-kernels): the first call fills it if needed.
    let first = nvrtc::compile(80).unwrap();
    let second = nvrtc::compile(80).unwrap();
    assert!(
        second.cached,
        "the second compile did not come from the cache"
    );
    assert_eq!(first.ptx, second.ptx);
    assert_eq!(first.cubin, second.cubin);
    assert_eq!(first.resources, second.resources);
}
