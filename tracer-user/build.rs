//! Builds the kernel programs (`tracer-ebpf`) with the pinned nightly and bpf-linker, so that a
//! plain `cargo build` builds everything. See scripts/setup.sh for the toolchain.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Nightly pinned for the eBPF target: its LLVM must not be newer than bpf-linker's (LLVM 22).
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-25";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root_dir =
        ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?.as_str().to_owned();
    println!("cargo:rerun-if-changed=../tracer-common/src");
    // The kernel programs keep the thin LTO they were verified with on every supported kernel,
    // whatever profile builds the agent (aya-build runs `cargo build --release` for them, and
    // cargo reads profile settings from the environment it inherits from here).
    // SAFETY: a build script is single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "thin") };
    aya_build::build_ebpf(
        [Package { name: "tracer-ebpf", root_dir: &root_dir, ..Default::default() }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
