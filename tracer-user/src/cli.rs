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
    /// Try each eBPF attach type for real and report what this kernel offers.
    Doctor,
    /// Show what the agent reads from Go executables: Go and module versions, where symbols
    /// come from, the functions it probes with their return instructions, struct offsets.
    GoInspect {
        /// Print the struct-offset table source measured from these binaries' DWARF instead
        /// (used by `cargo xtask go-offsets`).
        #[arg(long)]
        offsets_table: bool,
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
    /// Pod metadata from the Kubernetes API: `auto` (the default: when running in a cluster),
    /// `on` or `off`.
    #[arg(long, value_enum)]
    pub kubernetes: Option<KubernetesMode>,
    /// This node's name, for watching only its pods (env NODE_NAME; default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
}
