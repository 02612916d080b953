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
        /// Print grpc-go struct offsets as the version-keyed table source instead, keyed by
        /// each binary's grpc-go module version (used by `cargo xtask go-offsets`).
        #[arg(long)]
        grpc_offsets_table: bool,
        #[arg(required = true)]
        binaries: Vec<std::path::PathBuf>,
    },
}

/// Propagation mode; see `RunArgs::propagation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Propagation {
    Off,
    #[default]
    SameHost,
    On,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Trace this process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace processes whose executable path or file name matches this glob (repeatable).
    #[arg(long = "exe", value_name = "GLOB")]
    pub exes: Vec<String>,
    /// Trace processes listening on this TCP port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// How trace context crosses process boundaries: `off` (nothing on the wire; in-process
    /// links and incoming `traceparent` headers only), `same-host` (also match the client and
    /// server sides of a TCP connection on this host; nothing on the wire), `on` (also carry the
    /// context to other hosts in a TCP header option; the payload is never changed).
    #[arg(long, value_enum, default_value_t = Propagation::SameHost, env = "TRACER_PROPAGATION")]
    pub propagation: Propagation,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Write a line to this file once every probe is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
    /// Finished spans that may wait for the collector; beyond this, new spans are dropped and
    /// counted (bounds the agent's memory while the collector is down or slow).
    #[arg(long, value_name = "SPANS", default_value_t = 8192, env = "TRACER_EXPORT_QUEUE",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub export_queue: u32,
}
