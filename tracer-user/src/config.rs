//! `tracer run` configuration: flags, environment variables and a YAML file.
//!
//! Precedence, per option: **flags > environment > file > defaults**. A list given at a higher
//! level replaces the lower one (it is not merged). The file is named by `--config FILE` or
//! `TRACER_CONFIG`; unknown fields are rejected by name, and every error names the file, the
//! field and the bad value (`tracer.yaml: selectors.ports[1]: 70000 is not a valid port`).
//!
//! | option | flag | environment | file |
//! | --- | --- | --- | --- |
//! | pids | `--pid` | `TRACER_PIDS` | `selectors.pids` |
//! | executable globs | `--exe` | `TRACER_EXES` | `selectors.exes` |
//! | listening ports | `--port` | `TRACER_PORTS` | `selectors.ports` |
//! | container ids | `--container` | `TRACER_CONTAINERS` | `selectors.containers` |
//! | namespaces | `--namespace` | `TRACER_NAMESPACES` | `selectors.namespaces` |
//! | pod name globs | `--pod` | `TRACER_PODS` | `selectors.pods` |
//! | pod labels | `--pod-label k=v` | `TRACER_POD_LABELS` | `selectors.labels` (map) |
//! | excluded executables | `--exclude-exe` | `TRACER_EXCLUDE_EXES` | `exclude.exes` |
//! | excluded namespaces | `--exclude-namespace` | `TRACER_EXCLUDE_NAMESPACES` | `exclude.namespaces` (default `[kube-system]`) |
//! | propagation | `--propagation` | `TRACER_PROPAGATION` | `propagation` (default `same-host`) |
//! | TLS plaintext | `--tls` | `TRACER_TLS` | `tls` (`auto`, `on`, `off`; default `auto`) |
//! | duration | `--duration` | `TRACER_DURATION` | `duration` (seconds) |
//! | ready file | `--ready-file` | `TRACER_READY_FILE` | `ready_file` |
//! | export queue | `--export-queue` | `TRACER_EXPORT_QUEUE` | `export.queue` (default 8192) |
//! | OTLP endpoint | `--otlp-endpoint` | `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` | `export.otlp.endpoint` |
//! | OTLP protocol | `--otlp-protocol` | `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` | `export.otlp.protocol` |
//! | OTLP headers | `--otlp-header k=v` | `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` | `export.otlp.headers` (map) |
//! | OTLP timeout | `--otlp-timeout-ms` | `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` | `export.otlp.timeout_ms` |
//! | OTLP insecure (gRPC without scheme) | `--otlp-insecure` | `OTEL_EXPORTER_OTLP_[TRACES_]INSECURE` | `export.otlp.insecure` |
//! | OTLP compression | `--otlp-compression` | `OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION` | `export.otlp.compression` (`gzip`, `none`) |
//! | OTLP CA certificate | `--otlp-certificate` | `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` | `export.otlp.certificate` |
//! | OTLP client certificate | `--otlp-client-certificate` | `OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE` | `export.otlp.client_certificate` |
//! | OTLP client key | `--otlp-client-key` | `OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_KEY` | `export.otlp.client_key` |
//! | Kubernetes metadata | `--kubernetes` | `TRACER_KUBERNETES` | `kubernetes.enabled` (`auto`, `on`, `off`) |
//! | node name | `--node-name` | `NODE_NAME` | `kubernetes.node_name` |
//! | kernel connection tables | `--kernel-connections` | `TRACER_KERNEL_CONNECTIONS` | `kernel.connections` (default 65536) |
//! | Prometheus endpoint | `--metrics-listen` | `TRACER_METRICS_LISTEN` | `metrics.listen` (default off) |
//! | request metrics over OTLP | `--no-otlp-metrics` | `TRACER_OTLP_METRICS=false` | `metrics.otlp` (default true) |
//! | phase span events | `--no-phases` | `TRACER_PHASES=false` | `phases` (default true) |
//! | tail sampling | `--tail-sampling` | `TRACER_TAIL_SAMPLING=true` | `export.tail.enabled` (default false) |
//! | tail latency threshold | `--tail-latency` | `TRACER_TAIL_LATENCY` | `export.tail.latency` (default `500ms`) |
//! | tail decision wait | `--tail-wait` | `TRACER_TAIL_WAIT` | `export.tail.wait` (default `2s`) |
//! | tail buffer (spans) | `--tail-buffer` | `TRACER_TAIL_BUFFER` | `export.tail.buffer` (default 16384) |
//!
//! The tail latency, wait and buffer are checked always and used only when tail sampling is on.
//!
//! Every OTLP setting also has an `OTEL_EXPORTER_OTLP_METRICS_*` variable for the request
//! metrics; the flags and the file set the generic value, for both signals.
//!
//! List variables are comma-separated (commas inside `{…}` of a glob stay in the glob).
//! OTLP header values are never logged nor shown in errors.

use crate::cli::{KubernetesMode, Propagation, RunArgs, TlsMode};
use crate::discovery::{DEFAULT_EXCLUDED_NAMESPACES, SelectorSpec};
use crate::export::{ExportConfig, config as otlp};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default `export.queue`.
pub const DEFAULT_EXPORT_QUEUE: u32 = 8192;

/// The resolved settings of `tracer run`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub selectors: SelectorSpec,
    pub propagation: Propagation,
    /// Which TLS libraries' plaintext is read.
    pub tls: TlsMode,
    pub duration: Option<u64>,
    pub ready_file: Option<PathBuf>,
    pub export_queue: u32,
    /// Where spans go (its `Debug` never shows header values).
    pub export: ExportConfig,
    /// Where request metrics go over OTLP (none: no endpoint).
    pub metrics_export: Option<otlp::OtlpConfig>,
    pub kubernetes: KubernetesMode,
    pub node_name: Option<String>,
    /// Connections the kernel's connection tables hold.
    pub kernel_connections: u32,
    /// Where to serve Prometheus metrics (none: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whether request metrics go to the OTLP collector too.
    pub otlp_metrics: bool,
    /// Tail sampling of exported spans (none: off).
    pub tail: Option<crate::export::tail::TailConfig>,
    /// Whether spans carry their phases as span events (`dns`, `connect`, `request.sent`, ...).
    pub phases: bool,
}

// ---- the file ----------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    selectors: FileSelectors,
    exclude: FileExclude,
    propagation: Option<Propagation>,
    tls: Option<TlsMode>,
    duration: Option<u64>,
    ready_file: Option<PathBuf>,
    export: FileExport,
    kubernetes: FileKubernetes,
    kernel: FileKernel,
    metrics: FileMetrics,
    phases: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileKernel {
    connections: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileMetrics {
    listen: Option<String>,
    otlp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileSelectors {
    // Wide integers, checked below, so an out-of-range value is named with its index.
    pids: Option<Vec<i64>>,
    exes: Option<Vec<String>>,
    ports: Option<Vec<i64>>,
    containers: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
    pods: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileExclude {
    exes: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileExport {
    queue: Option<i64>,
    otlp: FileOtlp,
    tail: FileTail,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileTail {
    enabled: Option<bool>,
    latency: Option<String>,
    wait: Option<String>,
    buffer: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileOtlp {
    endpoint: Option<String>,
    protocol: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    timeout_ms: Option<u64>,
    insecure: Option<bool>,
    compression: Option<String>,
    certificate: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

impl std::fmt::Debug for FileOtlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileOtlp")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.as_ref().map(|h| h.keys().collect::<Vec<_>>()))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileKubernetes {
    enabled: Option<KubernetesMode>,
    node_name: Option<String>,
}

/// A configuration error, already worded for the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn parse_file(name: &str, text: &str) -> Result<File, ConfigError> {
    if text.trim().is_empty() {
        return Ok(File::default());
    }
    // The YAML errors name the field's path themselves (`selectors.exes: invalid type: …`)
    // and end with the line and column.
    serde_yaml_ng::from_str::<File>(text).map_err(|e| ConfigError(format!("{name}: {e}")))
}

/// Layers one option: the first of flag, environment, file that is set.
fn pick<T>(flag: Option<T>, env: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(env).or(file)
}

fn nonempty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Splits a comma-separated variable, keeping commas inside `{…}` (glob alternatives).
pub fn split_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

fn int_list<T: TryFrom<i64>>(where_: &str, values: &[i64], what: &str, min: i64) -> Result<Vec<T>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if *v < min {
                return Err(ConfigError(format!("{where_}[{i}]: {v} is not a valid {what}")));
            }
            T::try_from(*v).map_err(|_| ConfigError(format!("{where_}[{i}]: {v} is not a valid {what}")))
        })
        .collect()
}

fn env_int_list<T: TryFrom<i64>>(
    var: &str,
    raw: Option<String>,
    what: &str,
    min: i64,
) -> Result<Option<Vec<T>>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let items = split_list(&raw);
    let mut nums = Vec::new();
    for (i, item) in items.iter().enumerate() {
        nums.push(item.parse::<i64>().map_err(|_| ConfigError(format!("{var}[{i}]: {item:?} is not a valid {what}")))?);
    }
    int_list(var, &nums, what, min).map(nonempty)
}

fn parse_enum<T: clap::ValueEnum>(var: &str, raw: Option<String>) -> Result<Option<T>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    T::from_str(raw.trim(), true).map(Some).map_err(|_| {
        let names: Vec<String> =
            T::value_variants().iter().filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned())).collect();
        ConfigError(format!("{var}: {raw:?} is not one of {}", names.join(", ")))
    })
}

fn parse_u64(var: &str, raw: Option<String>, what: &str) -> Result<Option<u64>, ConfigError> {
    raw.map(|r| r.trim().parse::<u64>().map_err(|_| ConfigError(format!("{var}: {r:?} is not {what}")))).transpose()
}

/// Resolves the settings from the flags, an environment lookup and the configuration file's
/// name and text (`None`: no file).
pub fn resolve(
    args: &RunArgs,
    env: impl Fn(&str) -> Option<String>,
    file: Option<(&str, &str)>,
) -> Result<Settings, ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let (fname, f) = match file {
        Some((name, text)) => (name.to_owned(), parse_file(name, text)?),
        None => (String::new(), File::default()),
    };
    let at = |field: &str| format!("{fname}: {field}");
    let env_list = |var: &str| env(var).map(|v| split_list(&v)).and_then(nonempty);

    // Selectors.
    let s = &f.selectors;
    let file_pids = s.pids.as_deref().map(|v| int_list::<u32>(&at("selectors.pids"), v, "pid", 1)).transpose()?;
    let file_ports = s.ports.as_deref().map(|v| int_list::<u16>(&at("selectors.ports"), v, "port", 1)).transpose()?;
    let file_labels = s.labels.clone();
    let env_labels = env_list("TRACER_POD_LABELS")
        .map(|l| crate::discovery::parse_labels("TRACER_POD_LABELS", &l))
        .transpose()
        .map_err(ConfigError)?;
    let flag_labels = nonempty(args.pod_labels.clone())
        .map(|l| crate::discovery::parse_labels("--pod-label", &l))
        .transpose()
        .map_err(ConfigError)?;
    let selectors = SelectorSpec {
        pids: pick(nonempty(args.pids.clone()), env_int_list("TRACER_PIDS", env("TRACER_PIDS"), "pid", 1)?, file_pids)
            .unwrap_or_default(),
        exes: pick(nonempty(args.exes.clone()), env_list("TRACER_EXES"), s.exes.clone()).unwrap_or_default(),
        ports: pick(
            nonempty(args.ports.clone()),
            env_int_list("TRACER_PORTS", env("TRACER_PORTS"), "port", 1)?,
            file_ports,
        )
        .unwrap_or_default(),
        containers: pick(nonempty(args.containers.clone()), env_list("TRACER_CONTAINERS"), s.containers.clone())
            .unwrap_or_default(),
        namespaces: pick(nonempty(args.namespaces.clone()), env_list("TRACER_NAMESPACES"), s.namespaces.clone())
            .unwrap_or_default(),
        pods: pick(nonempty(args.pods.clone()), env_list("TRACER_PODS"), s.pods.clone()).unwrap_or_default(),
        labels: pick(flag_labels, env_labels, file_labels).unwrap_or_default(),
        exclude_exes: pick(
            nonempty(args.exclude_exes.clone()),
            env_list("TRACER_EXCLUDE_EXES"),
            f.exclude.exes.clone(),
        )
        .unwrap_or_default(),
        exclude_namespaces: pick(
            nonempty(args.exclude_namespaces.clone()),
            env_list("TRACER_EXCLUDE_NAMESPACES"),
            f.exclude.namespaces.clone(),
        )
        .unwrap_or_else(|| DEFAULT_EXCLUDED_NAMESPACES.iter().map(|s| s.to_string()).collect()),
    };
    // Validate globs and ids here, so a bad one is named before anything starts.
    crate::discovery::Selector::from_spec(&selectors).map_err(|e| ConfigError(e.to_string()))?;

    let propagation =
        pick(args.propagation, parse_enum("TRACER_PROPAGATION", env("TRACER_PROPAGATION"))?, f.propagation)
            .unwrap_or_default();
    let tls = pick(args.tls, parse_enum("TRACER_TLS", env("TRACER_TLS"))?, f.tls).unwrap_or_default();
    let duration =
        pick(args.duration, parse_u64("TRACER_DURATION", env("TRACER_DURATION"), "a number of seconds")?, f.duration);
    let ready_file = pick(args.ready_file.clone(), env("TRACER_READY_FILE").map(PathBuf::from), f.ready_file.clone());
    let file_queue = f
        .export
        .queue
        .map(|q| {
            u32::try_from(q).ok().filter(|q| *q >= 1).ok_or_else(|| {
                ConfigError(format!("{}: {q} is not a queue size (1 to {})", at("export.queue"), u32::MAX))
            })
        })
        .transpose()?;
    let env_queue = parse_u64("TRACER_EXPORT_QUEUE", env("TRACER_EXPORT_QUEUE"), "a queue size")?
        .map(|q| {
            u32::try_from(q)
                .ok()
                .filter(|q| *q >= 1)
                .ok_or_else(|| ConfigError(format!("TRACER_EXPORT_QUEUE: {q} is not a queue size (1 to {})", u32::MAX)))
        })
        .transpose()?;
    let export_queue = pick(args.export_queue, env_queue, file_queue).unwrap_or(DEFAULT_EXPORT_QUEUE);
    let kubernetes =
        pick(args.kubernetes, parse_enum("TRACER_KUBERNETES", env("TRACER_KUBERNETES"))?, f.kubernetes.enabled)
            .unwrap_or_default();
    let node_name = pick(args.node_name.clone(), env("NODE_NAME"), f.kubernetes.node_name.clone());

    let connections = |source: &str, v: i64| {
        u32::try_from(v)
            .ok()
            .filter(|n| (64..=16_777_216).contains(n))
            .ok_or_else(|| ConfigError(format!("{source}: {v} is not a number of connections (64 to 16777216)")))
    };
    let file_conns = f.kernel.connections.map(|v| connections(&at("kernel.connections"), v)).transpose()?;
    let env_conns = env("TRACER_KERNEL_CONNECTIONS")
        .map(|r| {
            r.trim()
                .parse::<i64>()
                .map_err(|_| ConfigError(format!("TRACER_KERNEL_CONNECTIONS: {r:?} is not a number of connections")))
                .and_then(|v| connections("TRACER_KERNEL_CONNECTIONS", v))
        })
        .transpose()?;
    let kernel_connections =
        pick(args.kernel_connections, env_conns, file_conns).unwrap_or(crate::kernel::loader::DEFAULT_CONNECTIONS);
    let addr = |source: &str, v: &str| {
        v.trim()
            .parse::<std::net::SocketAddr>()
            .map_err(|_| ConfigError(format!("{source}: {v:?} is not an address like 127.0.0.1:9464")))
    };
    let file_listen = f.metrics.listen.as_deref().map(|v| addr(&at("metrics.listen"), v)).transpose()?;
    let env_listen = env("TRACER_METRICS_LISTEN").map(|v| addr("TRACER_METRICS_LISTEN", &v)).transpose()?;
    let metrics_listen = pick(args.metrics_listen, env_listen, file_listen);
    let env_otlp_metrics = env_bool(&env, "TRACER_OTLP_METRICS")?;
    let otlp_metrics = pick(args.no_otlp_metrics.then_some(false), env_otlp_metrics, f.metrics.otlp).unwrap_or(true);
    let phases = pick(args.no_phases.then_some(false), env_bool(&env, "TRACER_PHASES")?, f.phases).unwrap_or(true);
    let tail = resolve_tail(args, &env, &f.export.tail, &at)?;

    let (export, metrics_export) = resolve_export(args, &env, &f.export.otlp, &fname)?;
    Ok(Settings {
        selectors,
        propagation,
        tls,
        duration,
        ready_file,
        export_queue,
        export,
        metrics_export,
        kubernetes,
        node_name,
        kernel_connections,
        metrics_listen,
        otlp_metrics,
        tail,
        phases,
    })
}

/// Tail sampling: on or off, and its three settings, each from the highest level that sets it.
/// A yes/no environment variable: `true`, `1`, `on` or `false`, `0`, `off`.
fn env_bool(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<bool>, ConfigError> {
    env(name)
        .map(|v| match v.trim() {
            "true" | "1" | "on" => Ok(true),
            "false" | "0" | "off" => Ok(false),
            other => Err(ConfigError(format!("{name}: {other:?} is not true or false"))),
        })
        .transpose()
}

fn resolve_tail(
    args: &RunArgs,
    env: &impl Fn(&str) -> Option<String>,
    file: &FileTail,
    at: &impl Fn(&str) -> String,
) -> Result<Option<crate::export::tail::TailConfig>, ConfigError> {
    use crate::export::tail::{DEFAULT_LATENCY, DEFAULT_MAX_SPANS, DEFAULT_WAIT, TailConfig};
    let env_enabled = env_bool(env, "TRACER_TAIL_SAMPLING")?;
    let enabled = pick(args.tail_sampling.then_some(true), env_enabled, file.enabled).unwrap_or(false);
    let duration = |source: &str, v: &str| {
        crate::cli::parse_duration(v)
            .ok()
            .ok_or_else(|| ConfigError(format!("{source}: {v:?} is not a duration like 500ms or 2s")))
    };
    let latency = pick(
        args.tail_latency,
        env("TRACER_TAIL_LATENCY").map(|v| duration("TRACER_TAIL_LATENCY", &v)).transpose()?,
        file.latency.as_deref().map(|v| duration(&at("export.tail.latency"), v)).transpose()?,
    )
    .unwrap_or(DEFAULT_LATENCY);
    let wait = pick(
        args.tail_wait,
        env("TRACER_TAIL_WAIT").map(|v| duration("TRACER_TAIL_WAIT", &v)).transpose()?,
        file.wait.as_deref().map(|v| duration(&at("export.tail.wait"), v)).transpose()?,
    )
    .unwrap_or(DEFAULT_WAIT);
    if wait.is_zero() {
        return Err(ConfigError(
            "the tail sampling wait (--tail-wait, TRACER_TAIL_WAIT, export.tail.wait) must be positive".into(),
        ));
    }
    let spans = |source: &str, v: i64| {
        u32::try_from(v)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ConfigError(format!("{source}: {v} is not a number of spans (1 to {})", u32::MAX)))
    };
    let env_buffer = env("TRACER_TAIL_BUFFER")
        .map(|r| {
            r.trim()
                .parse::<i64>()
                .map_err(|_| ConfigError(format!("TRACER_TAIL_BUFFER: {r:?} is not a number of spans")))
                .and_then(|v| spans("TRACER_TAIL_BUFFER", v))
        })
        .transpose()?;
    let file_buffer = file.buffer.map(|v| spans(&at("export.tail.buffer"), v)).transpose()?;
    let max_spans = pick(args.tail_buffer, env_buffer, file_buffer).map_or(DEFAULT_MAX_SPANS, |n| n as usize);
    Ok(enabled.then_some(TailConfig { latency, wait, max_spans }))
}

/// Percent-encodes what would break a `k=v,k=v` list.
fn encode(s: &str) -> String {
    s.replace('%', "%25").replace(',', "%2C").replace('=', "%3D")
}

/// The OTLP settings of traces and metrics: each setting comes whole from the highest level
/// that sets it (a flag or the file sets the generic variable; the environment may also set
/// the per-signal ones), then the exporter's own rules apply.
fn resolve_export(
    args: &RunArgs,
    env: &impl Fn(&str) -> Option<String>,
    file: &FileOtlp,
    fname: &str,
) -> Result<(ExportConfig, Option<otlp::OtlpConfig>), ConfigError> {
    let flag_headers = nonempty(args.otlp_headers.clone())
        .map(|hs| {
            hs.iter()
                .enumerate()
                .map(|(i, h)| match h.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => Ok(format!("{}={}", encode(k.trim()), encode(v))),
                    _ => Err(ConfigError(format!("--otlp-header[{i}]: not of the form name=value"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join(","))
        })
        .transpose()?;
    let file_headers = file
        .headers
        .as_ref()
        .map(|h| h.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join(","));
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    // (generic variable, flag value, flag name, file value, file field)
    type Group<'a> = (&'static str, Option<String>, &'a str, Option<String>, &'a str);
    let g = otlp::GENERIC;
    let groups: [Group<'_>; 9] = [
        (g.endpoint, args.otlp_endpoint.clone(), "--otlp-endpoint", file.endpoint.clone(), "export.otlp.endpoint"),
        (g.protocol, args.otlp_protocol.clone(), "--otlp-protocol", file.protocol.clone(), "export.otlp.protocol"),
        (g.headers, flag_headers, "--otlp-header", file_headers, "export.otlp.headers"),
        (
            g.timeout,
            args.otlp_timeout_ms.map(|t| t.to_string()),
            "--otlp-timeout-ms",
            file.timeout_ms.map(|t| t.to_string()),
            "export.otlp.timeout_ms",
        ),
        (
            g.insecure,
            args.otlp_insecure.then(|| "true".to_string()),
            "--otlp-insecure",
            file.insecure.map(|b| b.to_string()),
            "export.otlp.insecure",
        ),
        (
            g.compression,
            args.otlp_compression.clone(),
            "--otlp-compression",
            file.compression.clone(),
            "export.otlp.compression",
        ),
        (
            g.certificate,
            path(&args.otlp_certificate),
            "--otlp-certificate",
            path(&file.certificate),
            "export.otlp.certificate",
        ),
        (
            g.client_certificate,
            path(&args.otlp_client_certificate),
            "--otlp-client-certificate",
            path(&file.client_certificate),
            "export.otlp.client_certificate",
        ),
        (
            g.client_key,
            path(&args.otlp_client_key),
            "--otlp-client-key",
            path(&file.client_key),
            "export.otlp.client_key",
        ),
    ];
    // The per-signal variables of each generic one, in the same order.
    let signal_vars = |generic: &str| {
        let i = g.all().iter().position(|v| *v == generic).unwrap_or_default();
        [otlp::TRACES.all()[i], otlp::METRICS.all()[i]]
    };
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    // Where each generic variable's value came from, to name it in errors.
    let mut renames: Vec<(&str, String)> = Vec::new();
    for (generic, flag, flag_name, file_value, field) in groups {
        let [traces, metrics] = signal_vars(generic);
        if let Some(v) = flag {
            values.insert(generic, v);
            renames.push((generic, flag_name.to_owned()));
        } else if [generic, traces, metrics].iter().any(|var| env(var).is_some()) {
            for var in [generic, traces, metrics] {
                if let Some(v) = env(var) {
                    values.insert(var, v);
                }
            }
        } else if let Some(v) = file_value {
            values.insert(generic, v);
            renames.push((generic, format!("{fname}: {field}")));
        }
    }
    let lookup = |name: &str| values.get(name).cloned();
    let rename = |e: otlp::ConfigError| {
        let mut msg = e.to_string();
        for (var, source) in &renames {
            if msg.starts_with(var) {
                msg = format!("{source}{}", &msg[var.len()..]);
                // "SOURCE=value ..." reads better as "SOURCE: value ...".
                if let Some(rest) = msg.strip_prefix(&format!("{source}=")) {
                    msg = format!("{source}: {rest}");
                }
            }
        }
        ConfigError(msg)
    };
    let export = ExportConfig::from_lookup(lookup).map_err(rename)?;
    let traces = match &export {
        ExportConfig::Otlp(c) => Some(c),
        ExportConfig::Stdout => None,
    };
    let metrics = otlp::OtlpConfig::metrics_from_lookup(lookup, traces).map_err(rename)?;
    Ok((export, metrics))
}

/// Reads the process environment and the configuration file (`--config` or `TRACER_CONFIG`).
pub fn load(args: &RunArgs) -> anyhow::Result<Settings> {
    let path =
        args.config.clone().or_else(|| std::env::var_os("TRACER_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
    for var in otlp::ALL_VARS {
        if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(var) {
            anyhow::bail!("{var} is not valid UTF-8");
        }
    }
    let text = match &path {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading the configuration file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let name = path.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default();
    let file = text.as_deref().map(|t| (name.as_str(), t));
    Ok(resolve(args, |k| std::env::var(k).ok(), file)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::config::Protocol;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn err(args: &RunArgs, e: &[(&str, &str)], file: &str) -> String {
        resolve(args, env(e), Some(("tracer.yaml", file))).unwrap_err().0
    }

    const FILE: &str = "
selectors:
  pids: [101, 102]
  exes: ['python3*', '/srv/{api,web}/bin/*']
  ports: [8080]
  containers: [ee4b20e90ac7]
  namespaces: [shop]
  pods: ['checkout-*']
  labels: {app: checkout, tier: web}
exclude:
  exes: [sshd]
  namespaces: [kube-system, monitoring]
propagation: 'on'
tls: 'off'
duration: 60
ready_file: /run/tracer.ready
export:
  queue: 1000
  otlp:
    endpoint: http://collector:4318
    protocol: http/protobuf
    headers: {authorization: 'Bearer s3cr=t,x'}
    timeout_ms: 2500
kubernetes:
  enabled: 'off'
  node_name: node-a
";

    #[test]
    fn defaults() {
        let s = resolve(&RunArgs::default(), env(&[]), None).unwrap();
        assert_eq!(s.selectors, SelectorSpec { exclude_namespaces: vec!["kube-system".into()], ..Default::default() });
        assert_eq!(s.propagation, Propagation::SameHost);
        assert_eq!(s.tls, TlsMode::Auto);
        assert_eq!(s.export_queue, DEFAULT_EXPORT_QUEUE);
        assert_eq!(s.export, ExportConfig::Stdout);
        assert_eq!(s.kubernetes, KubernetesMode::Auto);
        assert_eq!((s.duration, s.ready_file, s.node_name), (None, None, None));
    }

    #[test]
    fn file_sets_every_option() {
        let s = resolve(&RunArgs::default(), env(&[]), Some(("tracer.yaml", FILE))).unwrap();
        assert_eq!(s.selectors.pids, [101, 102]);
        assert_eq!(s.selectors.exes, ["python3*", "/srv/{api,web}/bin/*"]);
        assert_eq!(s.selectors.ports, [8080]);
        assert_eq!(s.selectors.containers, ["ee4b20e90ac7"]);
        assert_eq!(s.selectors.namespaces, ["shop"]);
        assert_eq!(s.selectors.pods, ["checkout-*"]);
        assert_eq!(s.selectors.labels.get("tier").map(String::as_str), Some("web"));
        assert_eq!(s.selectors.exclude_exes, ["sshd"]);
        assert_eq!(s.selectors.exclude_namespaces, ["kube-system", "monitoring"]);
        assert_eq!(s.propagation, Propagation::On);
        assert_eq!(s.tls, TlsMode::Off);
        assert_eq!(s.duration, Some(60));
        assert_eq!(s.ready_file.as_deref(), Some(Path::new("/run/tracer.ready")));
        assert_eq!(s.export_queue, 1000);
        assert_eq!(s.kubernetes, KubernetesMode::Off);
        assert_eq!(s.node_name.as_deref(), Some("node-a"));
        let ExportConfig::Otlp(o) = &s.export else { panic!("{:?}", s.export) };
        assert_eq!(o.protocol, Protocol::HttpProtobuf);
        assert_eq!(o.endpoint, "http://collector:4318/v1/traces");
        // Commas and '=' in a header value survive.
        assert_eq!(o.headers, [("authorization".to_string(), "Bearer s3cr=t,x".to_string())]);
        assert_eq!(o.timeout, std::time::Duration::from_millis(2500));
        // Header values never show in Debug output.
        assert!(!format!("{s:?}").contains("s3cr"));
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let file = Some(("tracer.yaml", FILE));
        let e = env(&[
            ("TRACER_PROPAGATION", "off"),
            ("TRACER_TLS", "on"),
            ("TRACER_EXES", "node,java"),
            ("TRACER_EXPORT_QUEUE", "500"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/custom"),
            ("NODE_NAME", "node-env"),
        ]);
        // Environment over file.
        let s = resolve(&RunArgs::default(), &e, file).unwrap();
        assert_eq!(s.propagation, Propagation::Off);
        assert_eq!(s.tls, TlsMode::On);
        assert_eq!(s.selectors.exes, ["node", "java"]);
        assert_eq!(s.selectors.pids, [101, 102], "untouched options keep the file's value");
        assert_eq!(s.export_queue, 500);
        assert_eq!(s.node_name.as_deref(), Some("node-env"));
        let ExportConfig::Otlp(o) = &s.export else { panic!() };
        assert_eq!(o.endpoint, "http://env:4318/custom", "the environment's endpoint replaces the file's");
        assert_eq!(o.protocol, Protocol::HttpProtobuf, "protocol still from the file");
        // Flags over both.
        let args = RunArgs {
            propagation: Some(Propagation::SameHost),
            tls: Some(TlsMode::Auto),
            exes: vec!["ruby".into()],
            export_queue: Some(7),
            otlp_endpoint: Some("http://flag:4318".into()),
            node_name: Some("node-flag".into()),
            exclude_namespaces: vec!["ops".into()],
            ..RunArgs::default()
        };
        let s = resolve(&args, &e, file).unwrap();
        assert_eq!(s.propagation, Propagation::SameHost);
        assert_eq!(s.tls, TlsMode::Auto);
        assert_eq!(s.selectors.exes, ["ruby"]);
        assert_eq!(s.export_queue, 7);
        assert_eq!(s.node_name.as_deref(), Some("node-flag"));
        assert_eq!(s.selectors.exclude_namespaces, ["ops"]);
        let ExportConfig::Otlp(o) = &s.export else { panic!() };
        assert_eq!(o.endpoint, "http://flag:4318/v1/traces");
        // An empty list in the file clears the default exclusions.
        let s = resolve(&RunArgs::default(), env(&[]), Some(("f", "exclude: {namespaces: []}"))).unwrap();
        assert!(s.selectors.exclude_namespaces.is_empty());
    }

    #[test]
    fn errors_name_file_field_and_value() {
        let a = RunArgs::default();
        assert_eq!(
            err(&a, &[], "selectors:\n  ports: [80, 70000]\n"),
            "tracer.yaml: selectors.ports[1]: 70000 is not a valid port"
        );
        assert_eq!(err(&a, &[], "selectors:\n  pids: [-3]\n"), "tracer.yaml: selectors.pids[0]: -3 is not a valid pid");
        let e = err(&a, &[], "selectors:\n  port: [80]\n");
        assert!(e.starts_with("tracer.yaml: selectors: unknown field `port`"), "{e}");
        let e = err(&a, &[], "exporter: {}\n");
        assert!(e.starts_with("tracer.yaml: unknown field `exporter`"), "{e}");
        assert_eq!(
            resolve(&a, env(&[("TRACER_TLS", "maybe")]), None).unwrap_err().0,
            "TRACER_TLS: \"maybe\" is not one of auto, on, off"
        );
        let e = err(&a, &[], "propagation: sideways\n");
        assert!(e.starts_with("tracer.yaml: propagation: unknown variant `sideways`"), "{e}");
        let e = err(&a, &[], "selectors:\n  exes: python3\n");
        assert!(
            e.starts_with("tracer.yaml: selectors.exes: invalid type: string \"python3\", expected a sequence"),
            "{e}"
        );
        assert_eq!(
            err(&a, &[], "export:\n  queue: 0\n"),
            "tracer.yaml: export.queue: 0 is not a queue size (1 to 4294967295)"
        );
        let e = err(&a, &[], "export:\n  otlp: {protocol: http/json, endpoint: 'http://c:4317'}\n");
        assert_eq!(
            e,
            "tracer.yaml: export.otlp.protocol: \"http/json\" is not supported; use \"grpc\" or \"http/protobuf\""
        );
        let e = err(&a, &[], "export:\n  otlp: {endpoint: 'collector:4318', protocol: http/protobuf}\n");
        assert!(e.starts_with("tracer.yaml: export.otlp.endpoint: \"collector:4318\" is not a valid endpoint"), "{e}");
        let e = err(&a, &[], "export:\n  otlp: {endpoint: 'https://c:4317', compression: zstd}\n");
        assert_eq!(e, "tracer.yaml: export.otlp.compression: \"zstd\" is not supported; use \"gzip\" or \"none\"");
        let e = err(&a, &[], "export:\n  otlp: {endpoint: 'https://c:4317', client_key: /k.pem}\n");
        assert!(e.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"), "{e}");
        let e = err(&a, &[], "selectors:\n  exes: ['[']\n");
        assert!(e.starts_with("--exe \"[\" is not a valid glob"), "{e}");
        // Environment and flag errors name the variable or flag.
        assert_eq!(err(&a, &[("TRACER_PORTS", "80,x")], ""), "TRACER_PORTS[1]: \"x\" is not a valid port");
        assert_eq!(
            err(&a, &[("TRACER_PROPAGATION", "maybe")], ""),
            "TRACER_PROPAGATION: \"maybe\" is not one of off, same-host, on"
        );
        let flag = RunArgs {
            otlp_protocol: Some("thrift".into()),
            otlp_endpoint: Some("http://c:4317".into()),
            ..RunArgs::default()
        };
        assert_eq!(
            err(&flag, &[], ""),
            "--otlp-protocol: \"thrift\" is not supported; use \"grpc\" or \"http/protobuf\""
        );
        // A header's value is never part of an error.
        let e = err(&a, &[], "export:\n  otlp: {endpoint: 'http://c:4317', headers: {'bad name': 'hunter2'}}\n");
        assert!(e.contains("export.otlp.headers") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn lists_split_on_commas_outside_braces() {
        assert_eq!(split_list("a, b,{c,d}*,"), ["a", "b", "{c,d}*"]);
        assert!(split_list(" , ").is_empty());
    }
}

#[cfg(test)]
mod agent_option_tests {
    use super::*;

    fn resolve_with(args: &RunArgs, vars: &[(&str, &str)], file: &str) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(args, move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()), Some(("tracer.yaml", file)))
    }

    #[test]
    fn kernel_and_metrics_options_follow_the_precedence() {
        let file = "kernel: {connections: 1000}\nmetrics: {listen: '127.0.0.1:9000', otlp: false}\n";
        let s = resolve_with(&RunArgs::default(), &[], file).unwrap();
        assert_eq!(s.kernel_connections, 1000);
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert!(!s.otlp_metrics);
        let env = [
            ("TRACER_KERNEL_CONNECTIONS", "2000"),
            ("TRACER_METRICS_LISTEN", "127.0.0.1:9100"),
            ("TRACER_OTLP_METRICS", "true"),
        ];
        let s = resolve_with(&RunArgs::default(), &env, file).unwrap();
        assert_eq!((s.kernel_connections, s.metrics_listen.unwrap().port(), s.otlp_metrics), (2000, 9100, true));
        let args = RunArgs {
            kernel_connections: Some(3000),
            metrics_listen: Some("127.0.0.1:9200".parse().unwrap()),
            no_otlp_metrics: true,
            ..RunArgs::default()
        };
        let s = resolve_with(&args, &env, file).unwrap();
        assert_eq!((s.kernel_connections, s.metrics_listen.unwrap().port(), s.otlp_metrics), (3000, 9200, false));
        let s = resolve_with(&RunArgs::default(), &[], "").unwrap();
        assert_eq!(
            (s.kernel_connections, s.metrics_listen, s.otlp_metrics),
            (crate::kernel::loader::DEFAULT_CONNECTIONS, None, true)
        );
    }

    #[test]
    fn kernel_and_metrics_errors_name_the_field_and_value() {
        let e = resolve_with(&RunArgs::default(), &[], "kernel: {connections: 10}\n").unwrap_err().0;
        assert!(e.contains("tracer.yaml: kernel.connections: 10"), "{e}");
        let e = resolve_with(&RunArgs::default(), &[], "metrics: {listen: 'nowhere'}\n").unwrap_err().0;
        assert!(e.contains("tracer.yaml: metrics.listen: \"nowhere\""), "{e}");
        let e = resolve_with(&RunArgs::default(), &[("TRACER_OTLP_METRICS", "maybe")], "").unwrap_err().0;
        assert!(e.contains("TRACER_OTLP_METRICS: \"maybe\""), "{e}");
        let e = resolve_with(&RunArgs::default(), &[], "metrics: {prometheus: true}\n").unwrap_err().0;
        assert!(e.contains("prometheus"), "unknown field named: {e}");
    }

    #[test]
    fn phases_are_on_by_default_and_follow_the_precedence() {
        assert!(resolve_with(&RunArgs::default(), &[], "").unwrap().phases);
        assert!(!resolve_with(&RunArgs::default(), &[], "phases: false\n").unwrap().phases);
        assert!(resolve_with(&RunArgs::default(), &[("TRACER_PHASES", "on")], "phases: false\n").unwrap().phases);
        let off = RunArgs { no_phases: true, ..RunArgs::default() };
        assert!(!resolve_with(&off, &[("TRACER_PHASES", "true")], "").unwrap().phases);
        let e = resolve_with(&RunArgs::default(), &[("TRACER_PHASES", "some")], "").unwrap_err().0;
        assert!(e.contains("TRACER_PHASES: \"some\" is not true or false"), "{e}");
    }

    #[test]
    fn tail_sampling_is_off_by_default_and_follows_the_precedence() {
        use crate::export::tail::TailConfig;
        use std::time::Duration;
        assert_eq!(resolve_with(&RunArgs::default(), &[], "").unwrap().tail, None);
        let file = "export:\n  tail: {enabled: true, latency: 300ms, wait: 1s, buffer: 50}\n";
        let s = resolve_with(&RunArgs::default(), &[], file).unwrap();
        assert_eq!(
            s.tail,
            Some(TailConfig { latency: Duration::from_millis(300), wait: Duration::from_secs(1), max_spans: 50 })
        );
        let env = [("TRACER_TAIL_LATENCY", "1.5s"), ("TRACER_TAIL_BUFFER", "60"), ("TRACER_TAIL_WAIT", "3s")];
        let s = resolve_with(&RunArgs::default(), &env, file).unwrap();
        assert_eq!(
            s.tail,
            Some(TailConfig { latency: Duration::from_millis(1500), wait: Duration::from_secs(3), max_spans: 60 })
        );
        let args =
            RunArgs { tail_latency: Some(Duration::from_millis(20)), tail_buffer: Some(70), ..RunArgs::default() };
        let s = resolve_with(&args, &env, file).unwrap();
        assert_eq!(
            s.tail,
            Some(TailConfig { latency: Duration::from_millis(20), wait: Duration::from_secs(3), max_spans: 70 })
        );
        // The environment turns off what the file turns on; the flag turns it on again.
        let off = [("TRACER_TAIL_SAMPLING", "false")];
        assert_eq!(resolve_with(&RunArgs::default(), &off, file).unwrap().tail, None);
        let on = RunArgs { tail_sampling: true, ..RunArgs::default() };
        assert_eq!(resolve_with(&on, &off, file).unwrap().tail.map(|t| t.max_spans), Some(50));
        // Defaults when on without settings.
        assert_eq!(resolve_with(&on, &[], "").unwrap().tail, Some(TailConfig::default()));
    }

    #[test]
    fn tail_sampling_errors_name_the_source_and_value() {
        let e = resolve_with(&RunArgs::default(), &[("TRACER_TAIL_SAMPLING", "maybe")], "").unwrap_err().0;
        assert!(e.contains("TRACER_TAIL_SAMPLING: \"maybe\""), "{e}");
        let e = resolve_with(&RunArgs::default(), &[("TRACER_TAIL_LATENCY", "500")], "").unwrap_err().0;
        assert!(e.contains("TRACER_TAIL_LATENCY: \"500\""), "{e}");
        let e = resolve_with(&RunArgs::default(), &[], "export: {tail: {wait: soon}}\n").unwrap_err().0;
        assert!(e.contains("tracer.yaml: export.tail.wait: \"soon\""), "{e}");
        let e = resolve_with(&RunArgs::default(), &[], "export: {tail: {buffer: 0}}\n").unwrap_err().0;
        assert!(e.contains("tracer.yaml: export.tail.buffer: 0"), "{e}");
        let e = resolve_with(&RunArgs::default(), &[("TRACER_TAIL_WAIT", "0s")], "").unwrap_err().0;
        assert!(e.contains("must be positive"), "{e}");
        let e = resolve_with(&RunArgs::default(), &[], "export: {tail: {enable: true}}\n").unwrap_err().0;
        assert!(e.contains("unknown field `enable`"), "{e}");
    }
}
