//! Compiles the host shim (gpu/shim/, the kernel sources of kernels/cuda/ as C++20) when the
//! `shim` feature is on: tests only, so release binaries never carry it.

fn main() {
    println!("cargo:rerun-if-changed=shim");
    println!("cargo:rerun-if-changed=../kernels/cuda");
    if std::env::var_os("CARGO_FEATURE_SHIM").is_none() {
        return;
    }
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file("shim/shim.cpp")
        .include("shim")
        // The kernels read block fields through int and u16 pointers, as CUDA code does.
        .flag("-fno-strict-aliasing")
        // No multiply-add contraction: each float operation is the one the source spells, as
        // NVRTC with --fmad=false.
        .flag_if_supported("-ffp-contract=off")
        .flag("-pthread")
        // The shim's speed bounds the tests' time, whatever the profile.
        .opt_level(2)
        .debug(false)
        .warnings(false)
        .compile("cascade_shim");
}
