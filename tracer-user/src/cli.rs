//! Command-line interface.

use clap::{Parser, Subcommand};

/// Distributed tracing with zero instrumentation, from the kernel.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace processes and export spans until SIGINT or SIGTERM.
    ///
    /// With no selector every process but the agent is traced. Export goes to the OTLP endpoint
    /// in OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (protocol from
    /// OTEL_EXPORTER_OTLP_PROTOCOL: grpc or http/protobuf); with none set, spans print to stdout
    /// as a tree per trace.
    Run(RunArgs),
    /// Show traces live in the terminal as they complete (one block per trace: spans indented
    /// under their parent, a duration bar scaled to the trace, service, status, duration).
    ///
    /// Takes the same selectors as `run`. Keys: q quit, p pause, up/down/PgUp/PgDn scroll.
    /// Spans also go to an OTLP collector when an endpoint is configured; never to stdout.
    Watch(WatchArgs),
    /// Try each eBPF attach type for real and report what this kernel offers.
    Doctor {
        /// Also turn the kernel programs' log on (at debug), show its lines, and load the
        /// agent's own programs with it to check the verifier takes them on this kernel.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Show what the agent reads from Go executables: Go and module versions, where symbols
    /// come from, the functions it probes with their return instructions, struct offsets.
    GoInspect {
        /// Print the struct-offset table source measured from these binaries' DWARF instead
        /// (used by `cargo xtask go-offsets`).
        #[arg(long)]
        offsets_table: bool,
        /// Print grpc-go struct offsets as the version-keyed table source instead, keyed by
        /// each binary's grpc-go module version (used by `cargo xtask go-offsets`).
        #[arg(long)]
        grpc_offsets_table: bool,
        #[arg(required = true)]
        binaries: Vec<std::path::PathBuf>,
    },
}

/// Propagation mode; see `RunArgs::propagation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Propagation {
    Off,
    #[default]
    SameHost,
    On,
}

impl From<Propagation> for tracer_common::Propagation {
    fn from(p: Propagation) -> Self {
        match p {
            Propagation::Off => Self::Off,
            Propagation::SameHost => Self::SameHost,
            Propagation::On => Self::On,
        }
    }
}

/// Whether to read the plaintext of TLS connections; see `RunArgs::tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// OpenSSL everywhere; Go's crypto/tls where the kernel has multi-uprobe links (with
    /// classic uprobes, its probes would add about a second to every traced Go program's exit).
    #[default]
    Auto,
    /// OpenSSL and Go's crypto/tls on every kernel.
    On,
    /// No TLS plaintext.
    Off,
}

/// Whether to read pod metadata from the Kubernetes API; see `RunArgs::kubernetes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubernetesMode {
    /// On when the agent runs in a cluster (`KUBERNETES_SERVICE_HOST` is set).
    #[default]
    Auto,
    On,
    Off,
}

/// `tracer run` options. Every option can also come from the environment (`TRACER_*`) or the
/// configuration file (`--config`); precedence is flags > environment > file > defaults, per
/// option (see `config`). Options without a value here take theirs from there.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// YAML configuration file (env TRACER_CONFIG). Flags and environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Trace this process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace processes whose executable path or file name matches this glob (repeatable).
    #[arg(long = "exe", value_name = "GLOB")]
    pub exes: Vec<String>,
    /// Trace processes listening on this TCP port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Trace the processes of this container: its id or a prefix of at least 12 hex digits
    /// (repeatable).
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,
    /// Trace the pods of this Kubernetes namespace (repeatable).
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Trace the pods whose name matches this glob (repeatable).
    #[arg(long = "pod", value_name = "GLOB")]
    pub pods: Vec<String>,
    /// Trace the pods that carry this label (`key=value`; repeated: all of them).
    #[arg(long = "pod-label", value_name = "KEY=VALUE")]
    pub pod_labels: Vec<String>,
    /// Never trace processes whose executable matches this glob (repeatable).
    #[arg(long = "exclude-exe", value_name = "GLOB")]
    pub exclude_exes: Vec<String>,
    /// Never trace the pods of this namespace (repeatable; replaces the default list,
    /// kube-system).
    #[arg(long = "exclude-namespace", value_name = "NAMESPACE")]
    pub exclude_namespaces: Vec<String>,
    /// How trace context crosses process boundaries: `off` (nothing on the wire; in-process
    /// links and incoming `traceparent` headers only), `same-host` (the default: also match the
    /// client and server sides of a TCP connection on this host; nothing on the wire), `on`
    /// (also carry the context to other hosts in a TCP header option; the payload is never
    /// changed).
    #[arg(long, value_enum)]
    pub propagation: Option<Propagation>,
    /// TLS plaintext through uprobes on OpenSSL and Go's crypto/tls: `auto` (the default:
    /// OpenSSL always, Go's crypto/tls where the kernel has multi-uprobe links), `on` (both on
    /// every kernel), `off` (none).
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Write a line to this file once every probe is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
    /// Finished spans that may wait for the collector (default 8192); beyond this, new spans
    /// are dropped and counted (bounds the agent's memory while the collector is down or slow).
    #[arg(long, value_name = "SPANS", value_parser = clap::value_parser!(u32).range(1..))]
    pub export_queue: Option<u32>,
    /// OTLP collector base URL (as OTEL_EXPORTER_OTLP_ENDPOINT, which it overrides).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf (as OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// OTLP request header `name=value` (repeatable; values are never logged). Replaces the
    /// headers of the environment and the file.
    #[arg(long = "otlp-header", value_name = "NAME=VALUE")]
    pub otlp_headers: Vec<String>,
    /// Per-export timeout in milliseconds (as OTEL_EXPORTER_OTLP_TIMEOUT).
    #[arg(long, value_name = "MS")]
    pub otlp_timeout_ms: Option<u64>,
    /// Compress export requests: gzip or none (as OTEL_EXPORTER_OTLP_COMPRESSION).
    #[arg(long, value_name = "ALGORITHM")]
    pub otlp_compression: Option<String>,
    /// PEM file of the CA that signed the collector's certificate, trusted instead of the
    /// system's roots (as OTEL_EXPORTER_OTLP_CERTIFICATE).
    #[arg(long, value_name = "FILE")]
    pub otlp_certificate: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS, with --otlp-client-key (as
    /// OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE).
    #[arg(long, value_name = "FILE")]
    pub otlp_client_certificate: Option<std::path::PathBuf>,
    /// PEM private key of the client certificate; keep it mode 0600 (as
    /// OTEL_EXPORTER_OTLP_CLIENT_KEY).
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<std::path::PathBuf>,
    /// A gRPC endpoint given without a scheme is plain http:// rather than https:// (as
    /// OTEL_EXPORTER_OTLP_INSECURE=true).
    #[arg(long)]
    pub otlp_insecure: bool,
    /// Pod metadata from the Kubernetes API: `auto` (the default: when running in a cluster),
    /// `on` or `off`.
    #[arg(long, value_enum)]
    pub kubernetes: Option<KubernetesMode>,
    /// This node's name, for watching only its pods (env NODE_NAME; default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Connections the kernel tracks at once (default 65,536; each costs about 100 bytes of
    /// kernel memory in two tables). Beyond it the least recently used are evicted, counted in
    /// the summary line (`kernel_evictions`) and reported in a warning.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    pub kernel_connections: Option<u32>,
    /// Serve request metrics and the agent's health in the Prometheus text format on
    /// http://ADDR/metrics (e.g. 127.0.0.1:9464). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Do not send the request metrics over OTLP (they are sent to the traces collector when
    /// an OTLP endpoint is configured, every OTEL_METRIC_EXPORT_INTERVAL ms, default 60 s).
    #[arg(long)]
    pub no_otlp_metrics: bool,
    /// Leave out the span events that time a request's phases (`dns`, `connect`,
    /// `tls.handshake`, `request.sent`, `request.received`, `response.first_byte`): smaller
    /// spans; `tracer watch` then draws plain bars.
    #[arg(long)]
    pub no_phases: bool,
    /// Tail sampling: hold each trace's spans until the trace is quiet, then export it whole if
    /// a span failed or was slow (--tail-latency), else as OTEL_TRACES_SAMPLER decides. Off by
    /// default.
    #[arg(long)]
    pub tail_sampling: bool,
    /// Tail sampling keeps every trace with a span at least this long (default 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tail_latency: Option<std::time::Duration>,
    /// Tail sampling decides a trace this long after its last span arrived (default 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tail_wait: Option<std::time::Duration>,
    /// Spans tail sampling holds at most (default 16384); beyond, the trace quiet for the
    /// longest is decided early and counted (`tail_decided_early`).
    #[arg(long, value_name = "SPANS", value_parser = clap::value_parser!(u32).range(1..))]
    pub tail_buffer: Option<u32>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Show only traces that last at least this long (e.g. 50ms, 1.5s, 200us).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_duration: Option<std::time::Duration>,
    /// Show only traces with at least one failed span.
    #[arg(long)]
    pub errors_only: bool,
    /// Write the agent's log here (the terminal belongs to the view; without this file the log
    /// is not kept).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<std::path::PathBuf>,
}

/// Parses `50ms`, `1.5s`, `200us`, `2m` (a number and a unit).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{text:?} is not a duration like 50ms or 1.5s"))?;
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("{text:?}: unit must be one of us, ms, s, m (e.g. 50ms)")),
    };
    std::time::Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "50", "ms", "5 parsecs", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn watch_takes_the_run_selectors_and_filters() {
        let cli = Cli::try_parse_from([
            "tracer",
            "watch",
            "--pid",
            "12",
            "--exe",
            "py*",
            "--min-duration",
            "50ms",
            "--errors-only",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else { panic!("not watch") };
        assert_eq!((w.run.pids, w.run.exes), (vec![12], vec!["py*".to_string()]));
        assert_eq!(w.min_duration, Some(Duration::from_millis(50)));
        assert!(w.errors_only);
        assert!(Cli::try_parse_from(["tracer", "run", "--metrics-listen", "not-an-address"]).is_err());
    }

    #[test]
    fn run_takes_the_tail_sampling_options() {
        let cli = Cli::try_parse_from([
            "tracer",
            "run",
            "--tail-sampling",
            "--tail-latency",
            "250ms",
            "--tail-wait",
            "1.5s",
            "--tail-buffer",
            "100",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else { panic!("not run") };
        assert!(r.tail_sampling);
        assert_eq!(r.tail_latency, Some(Duration::from_millis(250)));
        assert_eq!(r.tail_wait, Some(Duration::from_millis(1500)));
        assert_eq!(r.tail_buffer, Some(100));
        assert!(Cli::try_parse_from(["tracer", "run", "--tail-buffer", "0"]).is_err());
        assert!(Cli::try_parse_from(["tracer", "run", "--tail-latency", "500"]).is_err());
    }
}
