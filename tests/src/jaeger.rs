//! Jaeger v2 as a real OTLP backend for the export tests: built once from the Go module proxy by
//! `scripts/jaeger.sh` (pinned version and checksum; the demo runs the same build) into
//! `target/jaeger/`, run with an in-memory store and OTLP receivers on ephemeral 127.0.0.1
//! ports, plain, TLS or mutual TLS; spans are read back through the query API
//! (`/api/traces/{id}`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::certs::CertFiles;
use crate::harness::{curl, free_port, source_root};

/// The Jaeger binary, built on first use (a few minutes) and cached under `target/jaeger/`.
pub fn binary() -> anyhow::Result<PathBuf> {
    let script = source_root().join("scripts/jaeger.sh");
    // Its progress goes to the test's stderr: the first build takes minutes.
    let out = Command::new(&script).stdin(Stdio::null()).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("{} failed with {}", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().context("scripts/jaeger.sh printed no path")?;
    Ok(PathBuf::from(path.trim()))
}

/// Transport security of Jaeger's OTLP receivers.
#[derive(Clone, Debug)]
pub enum ReceiverTls {
    Plain,
    /// TLS with this server certificate.
    Tls(CertFiles),
    /// Mutual TLS: this server certificate, and clients must present one signed by `client_ca`.
    Mutual {
        server: CertFiles,
        client_ca: PathBuf,
    },
}

/// A running Jaeger, killed on drop.
pub struct Jaeger {
    child: Child,
    dir: PathBuf,
    tls: bool,
    pub grpc_port: u16,
    pub http_port: u16,
    pub query_port: u16,
}

fn tls_block(tls: &ReceiverTls) -> String {
    let p = |p: &Path| p.display().to_string();
    match tls {
        ReceiverTls::Plain => String::new(),
        ReceiverTls::Tls(s) => {
            format!("\n        tls:\n          cert_file: {}\n          key_file: {}", p(&s.cert), p(&s.key))
        }
        ReceiverTls::Mutual { server, client_ca } => format!(
            "\n        tls:\n          cert_file: {}\n          key_file: {}\n          client_ca_file: {}",
            p(&server.cert),
            p(&server.key),
            p(client_ca)
        ),
    }
}

impl Jaeger {
    /// Starts Jaeger (config and log in `dir`) and waits until it is ready.
    pub fn start(dir: &Path, tls: &ReceiverTls) -> anyhow::Result<Self> {
        Self::start_with(dir, tls, true)
    }

    /// Starts Jaeger as users run it: a traces backend only (its OTLP receivers answer metrics
    /// with UNIMPLEMENTED / 404), no TLS.
    pub fn start_traces_only(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &ReceiverTls::Plain, false)
    }

    fn start_with(dir: &Path, tls: &ReceiverTls, metrics: bool) -> anyhow::Result<Self> {
        let bin = binary()?;
        let (grpc_port, http_port, query_port, query_grpc) = (free_port(), free_port(), free_port(), free_port());
        let t = tls_block(tls);
        let metrics_pipeline = if metrics {
            "\n    metrics:\n      receivers: [otlp]\n      processors: []\n      exporters: [debug]"
        } else {
            ""
        };
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]{metrics_pipeline}
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query_port}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc_port}{t}
      http:
        endpoint: 127.0.0.1:{http_port}{t}
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
  debug:
    verbosity: basic
"
        );
        std::fs::create_dir_all(dir)?;
        let config_file = dir.join("jaeger.yaml");
        std::fs::write(&config_file, config)?;
        let log = dir.join("jaeger.log");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("jaeger.stderr"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut jaeger = Self {
            child,
            dir: dir.to_owned(),
            tls: !matches!(tls, ReceiverTls::Plain),
            grpc_port,
            http_port,
            query_port,
        };
        let ready = poll_until("Jaeger to be ready", Duration::from_secs(60), || {
            jaeger.log().contains("Everything is ready") || jaeger.child.try_wait().ok().flatten().is_some()
        });
        if ready.is_err() || jaeger.child.try_wait()?.is_some() {
            bail!("Jaeger did not start:\n{}", jaeger.log());
        }
        Ok(jaeger)
    }

    /// Jaeger's own log (stdout and stderr).
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        read("jaeger.log") + &read("jaeger.stderr")
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The OTLP/gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.grpc_port)
    }

    /// The OTLP/HTTP base URL.
    pub fn http_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.http_port)
    }

    /// The spans of trace `trace_id` (hex) as (operation name, service name), none when the
    /// trace is unknown.
    pub fn trace(&self, trace_id: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.spans(&format!("traces/{trace_id}"))
    }

    /// Operation names of the spans of service `service` (the most recent traces).
    pub fn service_operations(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let spans = self.spans(&format!("traces?service={service}&limit=50&lookback=1h"))?;
        Ok(spans.into_iter().filter(|(_, s)| s == service).map(|(op, _)| op).collect())
    }

    /// Every span of the traces the query API answers `/api/<query>` with, as (operation name,
    /// service name).
    fn spans(&self, query: &str) -> anyhow::Result<Vec<(String, String)>> {
        let url = format!("http://127.0.0.1:{}/api/{query}", self.query_port);
        let body = curl(&[&url])?;
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("query answer {body:?}"))?;
        let mut out = Vec::new();
        for trace in v["data"].as_array().into_iter().flatten() {
            for span in trace["spans"].as_array().into_iter().flatten() {
                let process = span["processID"].as_str().unwrap_or_default();
                let service = trace["processes"][process]["serviceName"].as_str().unwrap_or_default();
                out.push((span["operationName"].as_str().unwrap_or_default().to_string(), service.to_string()));
            }
        }
        Ok(out)
    }

    /// Waits until trace `trace_id` has `n` spans in Jaeger and returns them.
    pub fn wait_for_trace(&self, trace_id: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<(String, String)>> {
        let mut last = Vec::new();
        let found = poll_until(&format!("{n} spans of trace {trace_id} in Jaeger"), timeout, || {
            last = self.trace(trace_id).unwrap_or_default();
            last.len() >= n
        });
        found.with_context(|| format!("got {last:?}; Jaeger log:\n{}", self.log()))?;
        Ok(last)
    }
}

/// Checks `cond` every 50 ms (each check may start a process) until it holds or `timeout` (made
/// [`crate::harness::patient`]) passes.
pub fn poll_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    crate::harness::wait_every(what, timeout, Duration::from_millis(50), cond)
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
