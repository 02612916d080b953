//! The Go version matrix: every cell (a Go release and build mode, or a grpc-go release) is a
//! fixture binary that `cargo xtask go-matrix` built; this test traces each with the same
//! scenario the Go support tests use and records a result per cell. Run it with
//! `cargo xtask go-matrix` (all cells) or `cargo xtask go-matrix --quick` (the CI subset).
//!
//! Input: `TRACER_GO_MATRIX`, a tab-separated manifest, one cell per line:
//! `go release`, `build mode`, `component` (`net/http`, `net/rpc`, `crypto/tls`, `context` or
//! `grpc-go X.Y.Z`), `binary`.
//! Output: the same lines with `pass` or `FAIL` and a detail appended, written to
//! `TRACER_GO_MATRIX_RESULTS`. Fails when any cell fails.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;
use tracer_tests::goctx::{self, Expect, Mode};
use tracer_tests::harness::require_root;
use tracer_tests::scenarios;

/// The message a failed scenario panicked with.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

#[test]
#[ignore = "needs root and the binaries `cargo xtask go-matrix` builds"]
fn go_version_matrix() {
    require_root();
    let manifest =
        std::env::var("TRACER_GO_MATRIX").expect("TRACER_GO_MATRIX: the manifest `cargo xtask go-matrix` writes");
    let results_path =
        std::env::var("TRACER_GO_MATRIX_RESULTS").expect("TRACER_GO_MATRIX_RESULTS: where to write results");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("reading {manifest}: {e}"));
    let mut results = String::new();
    let mut failed = Vec::new();
    let mut cells = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let [go, mode, component, bin] = f[..] else { panic!("bad manifest line {line:?}") };
        cells += 1;
        let label = format!("{go}-{mode}-{}", component.replace([' ', '/'], "-"));
        let bin = Path::new(bin);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| match component {
            "net/http" => scenarios::fanout(bin, &label, 30),
            "net/rpc" => scenarios::netrpc_paired(bin, &label, 50, 10),
            "crypto/tls" => scenarios::https_call_chain(bin, &label, 10),
            // Every build mode, stripped too (pclntab and the offsets table): linked.
            "context" => goctx::over_http(bin, &label, &Mode { path: "/pool/http/", calls: 1, expect: Expect::Linked }),
            c if c.starts_with("grpc-go ") => scenarios::grpc_unary_and_streaming(bin, &label),
            other => panic!("unknown component {other:?}"),
        }));
        let (verdict, detail) = match outcome {
            Ok(()) => ("pass", format!("{:.1} s", started.elapsed().as_secs_f64())),
            Err(p) => {
                let msg = panic_text(p).replace(['\t', '\n'], " ");
                failed.push(format!("{go} {mode} {component}: {msg}"));
                ("FAIL", msg.chars().take(300).collect())
            }
        };
        eprintln!("matrix: {go} {mode} {component}: {verdict} ({detail})");
        results.push_str(&format!("{go}\t{mode}\t{component}\t{verdict}\t{detail}\n"));
        std::fs::write(&results_path, &results).unwrap_or_else(|e| panic!("writing {results_path}: {e}"));
    }
    assert!(cells > 0, "the manifest {manifest} lists no cell");
    assert!(failed.is_empty(), "{} of {cells} cells failed:\n{}", failed.len(), failed.join("\n"));
}
