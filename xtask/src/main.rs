//! Project tasks: `cargo xtask <task>`.
//!
//! * `test`   – every test: root-free unit and golden tests, then the privileged end-to-end tests.
//! * `e2e`    – only the privileged end-to-end tests (real programs, real kernel, real services).
//! * `fixtures` – build the test services (Go binaries) into target/fixtures.
//! * `demo`   – trace the bundled demo services into Jaeger (or trace what the arguments name).
//! * `bench`  – measure what the agent costs traced services; writes docs/benchmarks.{md,svg}.
//! * `fuzz`   – run every cargo-fuzz target of `fuzz/` for a bounded time.
//! * `vm-test` – boot other kernels in qemu and run the doctor and an e2e subset in each.
//! * `go-offsets` – regenerate the Go struct-offset table from real builds of each Go release.

mod bench;
mod demo;
mod fuzz;
mod gomatrix;
mod vm;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run every test: unit/golden tests, a short fuzzing run, end-to-end tests, the Go matrix's
    /// and the kernel tier's CI subsets and the benchmark's smoke run (needs root).
    Test,
    /// Run the privileged end-to-end tests; extra arguments filter test names.
    E2e { filter: Vec<String> },
    /// Build the test fixture services.
    Fixtures,
    /// Trace the bundled demo (no arguments) or run `tracer run` with the given arguments.
    Demo {
        /// Arguments passed to `tracer run` (e.g. `--pid 1234`); empty traces the bundled demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the agent's overhead (needs root); writes docs/benchmarks.md and .svg.
    Bench(bench::BenchArgs),
    /// Run each fuzz target (fuzz/) for a bounded time; installs cargo-fuzz when missing.
    Fuzz(fuzz::FuzzArgs),
    /// Regenerate the Go struct-offset table (tracer-user/src/golang/gobin/offsets_table.rs) from real
    /// builds with each Go release in GO_RELEASES (fetched with GOTOOLCHAIN) and the local Go.
    GoOffsets,
    /// Trace Go fixtures built with every Go release (1.21 to the newest, via GOTOOLCHAIN) in
    /// every build mode (plain, stripped, PIE, cgo) and grpc-go releases; prints a result per
    /// cell and writes docs/go-matrix.md (needs root). `--quick`: the CI subset.
    GoMatrix(gomatrix::GoMatrixArgs),
    /// Boot Debian's 6.1 and 6.12 kernels in qemu (TCG) and run `tracer doctor` and an e2e subset
    /// in each, with and without lockdown=integrity; writes docs/kernels.md (needs root).
    VmTest(vm::VmArgs),
}

/// Go releases the offset table is measured on: the last patch of each supported minor release
/// (the local toolchain is added). Fields that change within a minor release would need more.
const GO_RELEASES: &[&str] = gomatrix::GO_MATRIX;

fn go_offsets() -> anyhow::Result<()> {
    let agent = build_agent()?;
    let dir = root().join("target/go-offsets");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("go.mod"), "module gooffsets\n\ngo 1.21\n")?;
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n)\n\nfunc main() { fmt.Println(http.Get(\"http://127.0.0.1:1/\")) }\n",
    )?;
    let mut binaries = Vec::new();
    for release in GO_RELEASES.iter().copied().chain(["local"]) {
        let out = dir.join(format!("bin-{release}"));
        let mut cmd = Command::new("go");
        cmd.args(["build", "-o"]).arg(&out).arg(".").current_dir(&dir).env("CGO_ENABLED", "0");
        if release != "local" {
            cmd.env("GOTOOLCHAIN", release);
        }
        run(&mut cmd)?;
        binaries.push(out);
    }
    let table = Command::new(&agent).args(["go-inspect", "--offsets-table"]).args(&binaries).output()?;
    if !table.status.success() {
        bail!("tracer go-inspect failed: {}", String::from_utf8_lossy(&table.stderr));
    }
    let path = root().join("tracer-user/src/golang/gobin/offsets_table.rs");
    std::fs::write(&path, &table.stdout)?;
    eprintln!("wrote {}", path.display());

    // grpc-go: the gRPC fixture service built against each release (local Go toolchain).
    let src = root().join("tests/fixtures/grpc");
    let mut binaries = Vec::new();
    for release in GRPC_RELEASES {
        let modfile = dir.join(format!("grpc-{release}.mod"));
        std::fs::copy(src.join("go.mod"), &modfile)?;
        let _ = std::fs::remove_file(dir.join(format!("grpc-{release}.sum")));
        let go = |args: &[&str]| {
            let mut cmd = Command::new("go");
            cmd.args(args).arg(format!("-modfile={}", modfile.display())).current_dir(&src).env("CGO_ENABLED", "0");
            cmd
        };
        run(&mut go(&["mod", "edit", &format!("-require=google.golang.org/grpc@v{release}")]))?;
        run(&mut go(&["mod", "tidy"]))?;
        let out = dir.join(format!("grpcsvc-{release}"));
        let mut build = go(&["build"]);
        build.arg("-o").arg(&out).arg("./cmd/grpcsvc");
        run(&mut build)?;
        binaries.push(out);
    }
    let table = Command::new(&agent).args(["go-inspect", "--grpc-offsets-table"]).args(&binaries).output()?;
    if !table.status.success() {
        bail!("tracer go-inspect failed: {}", String::from_utf8_lossy(&table.stderr));
    }
    let path = root().join("tracer-user/src/golang/grpc_offsets_table.rs");
    std::fs::write(&path, &table.stdout)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// grpc-go releases measured for the gRPC offset table: both sides of the 1.60 and 1.69 layout
/// changes. (1.85 reshaped `headerFrame`; the probes do not support it yet.)
const GRPC_RELEASES: &[&str] = &["1.59.0", "1.60.1", "1.68.2", "1.69.4", "1.70.0"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn fixtures_dir() -> PathBuf {
    root().join("target").join("fixtures")
}

fn build_fixtures() -> anyhow::Result<()> {
    let out = fixtures_dir();
    std::fs::create_dir_all(&out)?;
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./...")
        .current_dir(root().join("tests/fixtures/go"))
        .env("CGO_ENABLED", "0"))?;
    // Variants of the fan-out service for the Go support tests: stripped (symbols from pclntab,
    // no DWARF), PIE, cgo (g found through the TLS block libc lays out), older Go releases
    // (fetched with GOTOOLCHAIN) stripped, so struct offsets come from the generated table.
    let variants: &[(&str, &[&str], &str, Option<&str>)] = &[
        ("fanout-stripped", &["-ldflags=-s -w"], "0", None),
        ("fanout-pie", &["-buildmode=pie"], "0", None),
        ("fanout-cgo", &[], "1", None),
        ("fanout-go1.21-stripped", &["-ldflags=-s -w"], "0", Some("go1.21.13")),
        ("fanout-go1.23-stripped", &["-ldflags=-s -w"], "0", Some("go1.23.12")),
    ];
    for (name, flags, cgo, toolchain) in variants {
        let mut cmd = Command::new("go");
        cmd.arg("build")
            .args(*flags)
            .arg("-o")
            .arg(out.join(name))
            .arg("./cmd/fanout")
            .current_dir(root().join("tests/fixtures/go"))
            .env("CGO_ENABLED", cgo);
        if let Some(t) = toolchain {
            cmd.env("GOTOOLCHAIN", t);
        }
        run(&mut cmd)?;
    }
    // gRPC services (tests/e2e_grpc.rs) and the h2c server (tests/e2e_http2.rs, Go 1.24+): a
    // module of their own, so the Go fixtures above keep building with Go 1.21 while grpc-go
    // needs a newer one.
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./...")
        .current_dir(root().join("tests/fixtures/grpc"))
        .env("CGO_ENABLED", "0"))?;
    // The context-linking services that need grpc-go and golang.org/x/sync
    // (tests/e2e_goctx.rs): a module of their own, since x/sync needs Go 1.24 and the gRPC
    // module above must keep building with Go 1.22 (the Go matrix).
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./...")
        .current_dir(root().join("tests/fixtures/goctx"))
        .env("CGO_ENABLED", "0"))?;
    // The database and messaging services (tests/e2e_db.rs, tests/e2e_messaging.rs): their
    // clients, a module of their own.
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./...")
        .current_dir(root().join("tests/fixtures/db"))
        .env("CGO_ENABLED", "0"))?;
    // The same service against grpc-go releases on both sides of the 1.60 and 1.69 layout
    // changes and past the 1.83 one (alternate go.mod files), and stripped (offsets from the
    // generated tables).
    let grpc_variants: &[(&str, Option<&str>, bool)] = &[
        ("grpcsvc-grpc1.59.0", Some("grpc1.59.0.mod"), false),
        ("grpcsvc-grpc1.68.2", Some("grpc1.68.2.mod"), false),
        // Newer than the layouts the uprobes know (grpc-go 1.83 reshaped loopyWriter).
        ("grpcsvc-grpc1.85.0", Some("grpc1.85.0.mod"), false),
        ("grpcsvc-stripped", None, true),
        ("grpcsvc-grpc1.59.0-stripped", Some("grpc1.59.0.mod"), true),
    ];
    for (name, modfile, stripped) in grpc_variants {
        let mut cmd = Command::new("go");
        cmd.arg("build");
        if let Some(m) = modfile {
            cmd.arg(format!("-modfile={m}"));
        }
        if *stripped {
            cmd.arg("-ldflags=-s -w");
        }
        cmd.arg("-o")
            .arg(out.join(name))
            .arg("./cmd/grpcsvc")
            .current_dir(root().join("tests/fixtures/grpc"))
            .env("CGO_ENABLED", "0");
        run(&mut cmd)?;
    }
    Ok(())
}

/// Runs one step of `xtask test`, records its time and prints every step's time so far.
fn timed<T>(
    times: &mut Vec<(&'static str, u64)>,
    name: &'static str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let result = f();
    times.push((name, started.elapsed().as_secs()));
    print_times(times);
    result
}

/// One line with every finished step of `xtask test` and its seconds.
fn print_times(times: &[(&str, u64)]) {
    let summary: Vec<String> = times.iter().map(|(n, s)| format!("{n} {s} s")).collect();
    eprintln!("xtask test: {}", summary.join(", "));
}

fn build_agent() -> anyhow::Result<PathBuf> {
    build_agent_as("release")
}

/// Builds the agent with a Cargo profile (`release`, or `dist` for the shipped build with
/// cross-crate LTO) and returns the binary's path.
fn build_agent_as(profile: &str) -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--profile", profile, "-p", "tracer-user"]))?;
    Ok(root().join("target").join(profile).join("tracer"))
}

/// Builds the kernel programs as tracer-user/build.rs does (aya-build: the pinned nightly,
/// bpf-linker, thin LTO, BTF), with the `no-klog` feature: without their log statements. The
/// benchmark loads it into the same agent (`TRACER_EBPF_OBJECT`) to show what the statements
/// cost when the log is off. Returns the object's path.
fn build_ebpf_without_log() -> anyhow::Result<PathBuf> {
    let target_dir = root().join("target").join("ebpf-no-klog");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", fuzz::NIGHTLY, "cargo", "build", "--package", "tracer-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--features", "no-klog", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf")
        .env("CARGO_PROFILE_RELEASE_LTO", "thin")
        .current_dir(root());
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    run(&mut cmd)?;
    Ok(target_dir.join("bpfel-unknown-none").join("release").join("tracer"))
}

fn e2e(filter: &[String]) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the end-to-end tests load eBPF programs: run them as root");
    }
    let agent = build_agent()?;
    build_fixtures()?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "tracer-tests",
        "--test",
        "e2e_http",
        "--test",
        "e2e_traces",
        "--test",
        "e2e_hostile",
        "--test",
        "e2e_faults",
        "--test",
        "e2e_lifecycle",
        "--test",
        "e2e_privilege",
        "--test",
        "e2e_go",
        "--test",
        "e2e_goctx",
        "--test",
        "e2e_metrics",
        "--test",
        "e2e_watch",
        "--test",
        "e2e_discovery",
        "--test",
        "e2e_netrpc",
        "--test",
        "e2e_grpc",
        "--test",
        "e2e_ipv6",
        "--test",
        "e2e_kernel",
        "--test",
        "e2e_export",
        "--test",
        "e2e_db",
        "--test",
        "e2e_messaging",
        "--test",
        "e2e_kafka",
        "--test",
        "e2e_http2",
        "--test",
        "e2e_tls",
        "--test",
        "e2e_phases",
        "--",
    ])
    .args(["--ignored", "--test-threads=1", "--nocapture"])
    .args(filter)
    .env("TRACER_BIN", &agent)
    .env("XTASK_BIN", std::env::current_exe()?)
    .env("TRACER_FIXTURES", fixtures_dir())
    .env("TRACER_SOURCE_ROOT", root());
    run(&mut cmd)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|v| v == "0"))
        })
        .unwrap_or(false)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test => {
            // Each step is timed and the times printed at the end, so CI's budget is measured.
            let mut times = Vec::new();
            // Habits first, they fail fast: formatting, then every lint as an error.
            timed(&mut times, "fmt", || run(cargo().args(["fmt", "--all", "--check"])))?;
            timed(&mut times, "clippy", || {
                run(cargo().args(["clippy", "--release", "--all-targets", "--", "-D", "warnings"]))
            })?;
            // Release, so the end-to-end build below reuses the same artifacts.
            timed(&mut times, "cargo test", || run(cargo().args(["test", "--release"])))?;
            timed(&mut times, "fuzz", || {
                fuzz::fuzz(&fuzz::FuzzArgs { seconds: fuzz::CI_SECONDS, targets: Vec::new() })
            })?;
            // The kernels users run, in qemu: 6.1 as shipped, 6.12 under lockdown=integrity. Their
            // test binaries, the agent and fixtures are built first (e2e reuses them); then each
            // guest, one single-threaded TCG vCPU, boots beside the end-to-end tests (which wait
            // on traffic more than they compute), the Go matrix and the bench smoke run.
            let vm_args = vm::VmArgs {
                kernels: Vec::new(),
                quick: true,
                no_docs: true,
                lockdown: vm::Lockdown::Both,
                only: None,
            };
            // A failed preparation (a kernel download, say) fails the run at the end, not before
            // the end-to-end suite has run.
            let vm = timed(&mut times, "build and fetch for vm-test", || vm::prepare(&vm_args)).map(|ready| {
                std::thread::spawn(move || {
                    let started = std::time::Instant::now();
                    (vm::boots(&vm_args, ready), started.elapsed().as_secs())
                })
            });
            let e2e = timed(&mut times, "e2e", || e2e(&[]));
            let matrix =
                timed(&mut times, "go-matrix", || gomatrix::go_matrix(&gomatrix::GoMatrixArgs { quick: true }));
            // Smoke run of the benchmark: it works end to end and every request becomes a span
            // (no timing assertions; the full benchmark is `cargo xtask bench`).
            let smoke = if matrix.is_ok() {
                timed(&mut times, "bench", || bench::bench(bench::BenchArgs::quick()))
            } else {
                Ok(())
            };
            let kernels = vm.and_then(|vm| {
                let (kernels, secs) = vm.join().map_err(|_| anyhow::anyhow!("vm-test panicked"))?;
                times.push(("vm-test boots (beside e2e, go-matrix and bench)", secs));
                print_times(&times);
                kernels
            });
            e2e.and(matrix).and(smoke).and(kernels)
        }
        Task::E2e { filter } => e2e(&filter),
        Task::Fixtures => build_fixtures(),
        Task::Demo { args } => demo::demo(args),
        Task::Bench(args) => bench::bench(args),
        Task::Fuzz(args) => fuzz::fuzz(&args),
        Task::GoOffsets => go_offsets(),
        Task::GoMatrix(args) => gomatrix::go_matrix(&args),
        Task::VmTest(args) => vm::vm_test(&args),
    }
}
