//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets of `fuzz/`, each for
//! a bounded time, starting from the committed seed corpus (`fuzz/corpus/<target>`). New inputs
//! go to `target/fuzz-corpus/<target>` (never into the committed corpus); a crash fails the run
//! and leaves its input under `fuzz/artifacts/<target>/`.
//!
//! The targets build with the pinned nightly (the one the eBPF crate uses) and a pinned
//! cargo-fuzz, which is installed when missing.

use anyhow::{Context as _, bail};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::root;

/// Nightly that builds the fuzz targets (libFuzzer needs `-Z` flags); the eBPF crate's.
pub const NIGHTLY: &str = "nightly-2026-06-25";
/// cargo-fuzz release installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// Seconds per target in `cargo xtask test` (CI).
pub const CI_SECONDS: u64 = 20;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run (default: every target).
    pub targets: Vec<String>,
}

/// `rustup run <nightly> cargo ...` with the variables of the outer (stable) cargo removed.
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", NIGHTLY, "cargo"]).current_dir(root().join("fuzz"));
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "RUSTFLAGS"] {
        c.env_remove(var);
    }
    c
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = nightly_cargo()
        .args(["fuzz", "--version"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    crate::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION])
            .env_remove("CARGO_TARGET_DIR"),
    )
}

fn target_dir() -> PathBuf {
    root().join("target").join("fuzz")
}

pub fn fuzz(args: &FuzzArgs) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let targets = if args.targets.is_empty() {
        let out = nightly_cargo().args(["fuzz", "list"]).output().context("cargo fuzz list")?;
        if !out.status.success() {
            bail!("cargo fuzz list: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect()
    } else {
        args.targets.clone()
    };
    // One build of every target; `cargo fuzz run` below then finds them up to date. No
    // sanitizer: the parsers are safe Rust, and without ASan each target runs several times as
    // many inputs per second; debug assertions and overflow checks stay on.
    let common = ["--release", "--debug-assertions", "--sanitizer", "none"];
    crate::run(nightly_cargo().args(["fuzz", "build"]).args(common).arg("--target-dir").arg(target_dir()))?;
    let logs = root().join("target").join("fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    let mut failed = Vec::new();
    // One target per CPU at a time: each is one single-threaded process run for a fixed time.
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    for chunk in targets.chunks(jobs) {
        let mut running = Vec::new();
        for t in chunk {
            let scratch = root().join("target").join("fuzz-corpus").join(t);
            std::fs::create_dir_all(&scratch)?;
            let seeds = root().join("fuzz").join("corpus").join(t);
            let log = logs.join(format!("{t}.log"));
            let mut cmd = nightly_cargo();
            cmd.args(["fuzz", "run"])
                .args(common)
                .arg("--target-dir")
                .arg(target_dir())
                .arg(t)
                .arg(&scratch)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={}", args.seconds))
                .args(["-max_len=8192", "-rss_limit_mb=2048", "-print_final_stats=1"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?);
            eprintln!("+ fuzz {t} for {} s (log: {})", args.seconds, log.display());
            let child = cmd.spawn().with_context(|| format!("running fuzz target {t}"))?;
            running.push((t, child, log));
        }
        for (t, mut child, log) in running {
            let status = child.wait().with_context(|| format!("waiting for fuzz target {t}"))?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let runs = text
                .lines()
                .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "?".into());
            if status.success() {
                eprintln!("fuzz {t}: ok, {runs} executions in {} s", args.seconds);
            } else {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("fuzz {t}: FAILED ({status}) after {runs} executions; last lines of the log:");
                for l in tail.iter().rev() {
                    eprintln!("  {l}");
                }
                failed.push(t.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {} (inputs under fuzz/artifacts/)", failed.join(", "));
    }
    Ok(())
}
