//! `cargo xtask go-matrix`: the Go support over Go releases, build modes and grpc-go releases.
//!
//! Builds the Go fixtures (tests/fixtures/go `cmd/fanout` for net/http, `cmd/netrpc` for
//! net/rpc, `cmd/httpserver` for crypto/tls, `cmd/ctxlink` for the context rule,
//! tests/fixtures/grpc for grpc-go) once per cell, with each Go release fetched by
//! `GOTOOLCHAIN`, then runs `tests/tests/e2e_matrix.rs`, which traces every cell with the
//! scenario the Go support tests use, and prints (and, for the full matrix, writes to
//! docs/go-matrix.md) a table with a result per cell. `--quick` is the CI subset: the oldest and
//! newest Go in every build mode and grpc-go on both sides of its layout changes.

use crate::{build_agent, build_fixtures, cargo, fixtures_dir, nix_is_root, root, run};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The last patch of every Go minor release from the oldest supported to the newest.
pub const GO_MATRIX: &[&str] =
    &["go1.21.13", "go1.22.12", "go1.23.12", "go1.24.13", "go1.25.14", "go1.26.11", "go1.27.4"];

/// Build modes: (name, extra `go build` flags, CGO_ENABLED).
const MODES: &[(&str, &[&str], &str)] = &[
    ("plain", &[], "0"),
    ("stripped", &["-ldflags=-s -w"], "0"),
    ("pie", &["-buildmode=pie"], "0"),
    ("cgo", &[], "1"),
];

#[derive(clap::Args)]
pub struct GoMatrixArgs {
    /// The CI subset: oldest and newest Go in every build mode, grpc-go 1.59.0 and 1.70.0.
    #[arg(long)]
    pub quick: bool,
}

struct Cell {
    go: String,
    mode: String,
    component: String,
    bin: PathBuf,
}

fn go_build(
    dir: &Path,
    toolchain: &str,
    flags: &[&str],
    cgo: &str,
    out: &Path,
    pkg: &str,
    modfile: Option<&Path>,
) -> anyhow::Result<()> {
    let mut cmd = Command::new("go");
    cmd.arg("build");
    if let Some(m) = modfile {
        cmd.arg(format!("-modfile={}", m.display()));
    }
    cmd.args(flags).arg("-o").arg(out).arg(pkg).current_dir(dir).env("CGO_ENABLED", cgo).env("GOTOOLCHAIN", toolchain);
    run(&mut cmd)
}

/// The grpc fixture's go.mod for `release`: none for the default one, the committed alternate
/// when there is one, else one made under `out` with `go mod edit` and `go mod tidy`.
fn grpc_modfile(release: &str, out: &Path) -> anyhow::Result<Option<PathBuf>> {
    let src = root().join("tests/fixtures/grpc");
    let default = std::fs::read_to_string(src.join("go.mod"))?;
    if default.contains(&format!("google.golang.org/grpc v{release}\n")) {
        return Ok(None);
    }
    let committed = src.join(format!("grpc{release}.mod"));
    if committed.exists() {
        return Ok(Some(committed));
    }
    let modfile = out.join(format!("grpc{release}.mod"));
    std::fs::write(&modfile, &default)?;
    std::fs::copy(src.join("go.sum"), out.join(format!("grpc{release}.sum")))?;
    let go = |args: &[&str]| {
        let mut cmd = Command::new("go");
        cmd.args(args).arg(format!("-modfile={}", modfile.display())).current_dir(&src);
        cmd
    };
    run(&mut go(&["mod", "edit", &format!("-require=google.golang.org/grpc@v{release}")]))?;
    run(&mut go(&["mod", "tidy"]))?;
    Ok(Some(modfile))
}

fn build_cells(quick: bool, out: &Path) -> anyhow::Result<Vec<Cell>> {
    let newest = *GO_MATRIX.last().expect("a Go release");
    let gos: Vec<&str> = if quick { vec![GO_MATRIX[0], newest] } else { GO_MATRIX.to_vec() };
    let go_src = root().join("tests/fixtures/go");
    let grpc_src = root().join("tests/fixtures/grpc");
    let mut cells = Vec::new();
    for go in &gos {
        for (mode, flags, cgo) in MODES {
            let dir = out.join(format!("{go}-{mode}"));
            std::fs::create_dir_all(&dir)?;
            for (component, pkg, name) in [
                ("net/http", "./cmd/fanout", "fanout"),
                ("net/rpc", "./cmd/netrpc", "netrpc"),
                ("crypto/tls", "./cmd/httpserver", "httpserver"),
                ("context", "./cmd/ctxlink", "ctxlink"),
            ] {
                let bin = dir.join(name);
                go_build(&go_src, go, flags, cgo, &bin, pkg, None)?;
                cells.push(Cell { go: go.to_string(), mode: mode.to_string(), component: component.into(), bin });
            }
        }
    }
    // grpc-go: every measured release plain and stripped with the newest Go, and the default
    // release (1.70.0) with every Go from 1.22 (the gRPC fixture's module needs Go 1.22).
    let mut grpc: Vec<(&str, &str, &str)> = Vec::new();
    let releases: &[&str] = if quick { &["1.59.0", "1.70.0"] } else { crate::GRPC_RELEASES };
    for r in releases {
        grpc.push((newest, "plain", r));
        grpc.push((newest, "stripped", r));
    }
    if !quick {
        for go in &GO_MATRIX[1..GO_MATRIX.len() - 1] {
            grpc.push((go, "plain", "1.70.0"));
        }
    }
    // One go.mod per release, made (with `go mod tidy` where none is committed) once for all
    // its cells.
    let mut modfiles: BTreeMap<&str, Option<PathBuf>> = BTreeMap::new();
    for (go, mode, release) in grpc {
        if !modfiles.contains_key(release) {
            modfiles.insert(release, grpc_modfile(release, out)?);
        }
        let dir = out.join(format!("{go}-{mode}"));
        std::fs::create_dir_all(&dir)?;
        let bin = dir.join(format!("grpcsvc-{release}"));
        let flags: &[&str] = if mode == "stripped" { &["-ldflags=-s -w"] } else { &[] };
        go_build(&grpc_src, go, flags, "0", &bin, "./cmd/grpcsvc", modfiles[release].as_deref())?;
        cells.push(Cell { go: go.into(), mode: mode.into(), component: format!("grpc-go {release}"), bin });
    }
    Ok(cells)
}

/// Markdown tables of the results: Go release x build mode (net/http, net/rpc, crypto/tls,
/// context), and grpc-go release x (Go release, build mode).
fn render(results: &str, quick: bool) -> String {
    let mut go_tab: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut grpc_tab: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut pass, mut all) = (0, 0);
    for line in results.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [go, mode, component, verdict, detail] = f[..] else { continue };
        all += 1;
        let ok = verdict == "pass";
        pass += usize::from(ok);
        let mark = if ok { "pass".to_string() } else { format!("**FAIL** ({detail})") };
        if let Some(release) = component.strip_prefix("grpc-go ") {
            grpc_tab.entry(release.to_string()).or_default().push(format!("{go} {mode}: {mark}"));
        } else {
            go_tab.entry((go.to_string(), mode.to_string())).or_default().push(format!("{component} {mark}"));
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "# Go version matrix\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask go-matrix{}` (source: `xtask/src/gomatrix.rs`, `tests/tests/e2e_matrix.rs`); do not edit by hand.\n",
        if quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        md,
        "Each cell is a fixture built with that Go release (fetched with `GOTOOLCHAIN`) and build mode, traced by the agent: \
         net/http = the fan-out service (server span, two client spans from goroutines three levels down, each the parent of its \
         downstream server span; 30 requests, every trace complete); net/rpc = 50 calls, 10 in flight on one connection, every \
         client span paired with its server span; crypto/tls = an HTTPS server whose handler calls it back over HTTPS, 10 \
         requests each one trace of three linked https spans; context = a worker pool started in main() making each \
         request's call with the request's `context.Context` (ctxlink /pool/http; 40 requests named by id, 4 in flight): \
         every client span the child of its own request's server span, found from the context it carries, and the parent \
         of its downstream server span, in every build mode; grpc-go = \
         unary, failing and server-streaming calls between two processes, client and server spans linked with the RPC \
         attributes and status codes.\n"
    );
    let _ = writeln!(md, "Result: {pass} of {all} cells pass.\n");
    let modes: Vec<&str> = MODES.iter().map(|m| m.0).collect();
    let _ = writeln!(md, "| Go | {} |", modes.join(" | "));
    let _ = writeln!(md, "| --- |{}", " --- |".repeat(modes.len()));
    let gos: Vec<String> = {
        let mut v: Vec<String> = go_tab.keys().map(|(g, _)| g.clone()).collect();
        v.dedup();
        v
    };
    for go in gos {
        let row: Vec<String> = modes
            .iter()
            .map(|m| go_tab.get(&(go.clone(), m.to_string())).map(|v| v.join("; ")).unwrap_or_else(|| "-".into()))
            .collect();
        let _ = writeln!(md, "| {go} | {} |", row.join(" | "));
    }
    let _ = writeln!(md, "\n| grpc-go | results |\n| --- | --- |");
    for (release, v) in &grpc_tab {
        let _ = writeln!(md, "| {release} | {} |", v.join("; "));
    }
    md
}

pub fn go_matrix(args: &GoMatrixArgs) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the Go matrix loads eBPF programs: run it as root");
    }
    let agent = build_agent()?;
    build_fixtures()?; // the downstream services of the net/http scenario
    let out = root().join("target/go-matrix");
    std::fs::create_dir_all(&out)?;
    let cells = build_cells(args.quick, &out)?;
    let manifest = out.join("cells.tsv");
    let text: String =
        cells.iter().map(|c| format!("{}\t{}\t{}\t{}\n", c.go, c.mode, c.component, c.bin.display())).collect();
    std::fs::write(&manifest, text)?;
    let results = out.join("results.tsv");
    let _ = std::fs::remove_file(&results);
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "tracer-tests", "--test", "e2e_matrix", "--", "--ignored", "--nocapture"])
        .env("TRACER_BIN", &agent)
        .env("TRACER_FIXTURES", fixtures_dir())
        .env("TRACER_SOURCE_ROOT", root())
        .env("TRACER_GO_MATRIX", &manifest)
        .env("TRACER_GO_MATRIX_RESULTS", &results);
    let outcome = run(&mut cmd);
    let text = std::fs::read_to_string(&results).with_context(|| format!("no results in {}", results.display()))?;
    let md = render(&text, args.quick);
    println!("{md}");
    std::fs::write(out.join("go-matrix.md"), &md)?;
    if !args.quick {
        std::fs::write(root().join("docs/go-matrix.md"), &md)?;
        eprintln!("wrote docs/go-matrix.md");
    }
    outcome
}
