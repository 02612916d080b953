//! Exporter configuration from the standard `OTEL_EXPORTER_OTLP_*` environment variables.
//!
//! Parsing is a pure function over a lookup closure ([`ExportConfig::from_lookup`],
//! [`OtlpConfig::metrics_from_lookup`]) so the precedence and validation rules are unit-tested
//! without touching the process environment; [`ExportConfig::from_env`] is the thin wrapper.
//!
//! Rules (see the OpenTelemetry "OTLP exporter" specification). Every setting has a generic
//! variable `OTEL_EXPORTER_OTLP_X` and per-signal ones `OTEL_EXPORTER_OTLP_TRACES_X` /
//! `OTEL_EXPORTER_OTLP_METRICS_X`; the signal's variable wins.
//!
//! * Endpoint: the signal's (used as is) over the generic one (for `http/protobuf`,
//!   `/v1/traces` or `/v1/metrics` is appended). With neither set, spans go to stdout
//!   ([`ExportConfig::Stdout`]); metrics go to the traces collector, with the traces settings
//!   (each overridden by a `METRICS_` variable).
//! * Protocol: `grpc` (default) or `http/protobuf`. Anything else (e.g. `http/json`) is an error.
//! * Headers: the generic list, overridden key by key by the signal's; comma-separated
//!   `key=value`, values percent-decoded. Header values are never logged or shown by
//!   `Debug`/`Display` (they are often credentials).
//! * Timeout: in milliseconds, default 10 s.
//! * Compression: `gzip` or `none` (default).
//! * TLS: an `https://` endpoint is verified against the system's root certificates, or only
//!   against the CA in the PEM file `CERTIFICATE` when set; `CLIENT_CERTIFICATE` and
//!   `CLIENT_KEY` (PEM files, both or neither) give the client identity for mutual TLS. The
//!   files are read when the exporter starts ([`super::tls`]); here they are only paths.
//! * Insecure: a gRPC endpoint without a scheme is `http://` when `INSECURE` is `true`, else
//!   `https://`.
//!
//! Empty values count as unset, as the specification requires.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
pub const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
pub const INSECURE: &str = "OTEL_EXPORTER_OTLP_INSECURE";
pub const TRACES_INSECURE: &str = "OTEL_EXPORTER_OTLP_TRACES_INSECURE";
pub const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
pub const CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
pub const CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
pub const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";

/// The variable names of one signal (or the generic ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalVars {
    /// Path appended to the generic endpoint for http/protobuf.
    pub path: &'static str,
    pub endpoint: &'static str,
    pub protocol: &'static str,
    pub headers: &'static str,
    pub timeout: &'static str,
    pub insecure: &'static str,
    pub certificate: &'static str,
    pub client_certificate: &'static str,
    pub client_key: &'static str,
    pub compression: &'static str,
}

impl SignalVars {
    /// Every variable of this set.
    pub const fn all(&self) -> [&'static str; 9] {
        [
            self.endpoint,
            self.protocol,
            self.headers,
            self.timeout,
            self.insecure,
            self.certificate,
            self.client_certificate,
            self.client_key,
            self.compression,
        ]
    }
}

/// The generic variables.
pub const GENERIC: SignalVars = SignalVars {
    path: "",
    endpoint: ENDPOINT,
    protocol: PROTOCOL,
    headers: HEADERS,
    timeout: TIMEOUT,
    insecure: INSECURE,
    certificate: CERTIFICATE,
    client_certificate: CLIENT_CERTIFICATE,
    client_key: CLIENT_KEY,
    compression: COMPRESSION,
};

/// The traces variables.
pub const TRACES: SignalVars = SignalVars {
    path: "/v1/traces",
    endpoint: TRACES_ENDPOINT,
    protocol: TRACES_PROTOCOL,
    headers: TRACES_HEADERS,
    timeout: TRACES_TIMEOUT,
    insecure: TRACES_INSECURE,
    certificate: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    compression: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
};

/// The metrics variables.
pub const METRICS: SignalVars = SignalVars {
    path: "/v1/metrics",
    endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    insecure: "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
    certificate: "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
    compression: "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
};

/// Every variable the exporters read.
pub const ALL_VARS: [&str; 27] = {
    let (g, t, m) = (GENERIC.all(), TRACES.all(), METRICS.all());
    let mut out = [""; 27];
    let mut i = 0;
    while i < 9 {
        out[i] = g[i];
        out[9 + i] = t[i];
        out[18 + i] = m[i];
        i += 1;
    }
    out
};

/// Default per-export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT` unset).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportConfig {
    /// No endpoint configured: print each trace as a tree on stdout.
    Stdout,
    /// Export over OTLP.
    Otlp(OtlpConfig),
}

/// OTLP wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Grpc,
    HttpProtobuf,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// Compression of export requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        })
    }
}

/// TLS material of an `https://` endpoint, as file paths (read when the exporter starts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificate(s) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS (with `client_key`).
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

/// A resolved OTLP destination.
///
/// `Debug` and `Display` show header names only, never values.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// Final URL: for gRPC the collector base URL, for HTTP the full `.../v1/traces` URL.
    pub endpoint: String,
    /// Extra request headers / gRPC metadata, names lower-cased, values decoded.
    pub headers: Vec<(String, String)>,
    /// Per-export timeout; also the deadline of the exporter's retries.
    pub timeout: Duration,
    pub compression: Compression,
    /// Used only for `https://` endpoints.
    pub tls: TlsFiles,
}

impl OtlpConfig {
    /// A configuration with no headers, no compression, system roots and the default timeout.
    pub fn new(protocol: Protocol, endpoint: impl Into<String>) -> Self {
        Self {
            protocol,
            endpoint: endpoint.into(),
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            compression: Compression::None,
            tls: TlsFiles::default(),
        }
    }

    /// Whether the endpoint uses TLS.
    pub fn is_tls(&self) -> bool {
        self.endpoint.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The metrics destination: the `METRICS_` and generic variables; with no metrics or generic
    /// endpoint, the traces collector `traces` with its settings (each overridden by a
    /// `METRICS_` variable). `None`: no endpoint at all.
    pub fn metrics_from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        traces: Option<&OtlpConfig>,
    ) -> Result<Option<OtlpConfig>, ConfigError> {
        resolve_signal(&METRICS, &lookup, traces)
    }
}

impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint)
            .field("headers", &format_args!("{:?} (values redacted)", self.header_names()))
            .field("timeout", &self.timeout)
            .field("compression", &self.compression)
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Display for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "otlp {} {} (timeout {:?}", self.protocol, self.endpoint, self.timeout)?;
        if self.compression != Compression::None {
            write!(f, ", {} compression", self.compression)?;
        }
        if self.is_tls() {
            match &self.tls.ca {
                Some(ca) => write!(f, ", CA {}", ca.display())?,
                None => f.write_str(", system roots")?,
            }
            if let Some(cert) = &self.tls.client_certificate {
                write!(f, ", client certificate {}", cert.display())?;
            }
        }
        if !self.headers.is_empty() {
            write!(f, ", headers: {}", self.header_names().join(", "))?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for ExportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportConfig::Stdout => f.write_str("stdout"),
            ExportConfig::Otlp(c) => c.fmt(f),
        }
    }
}

/// An invalid exporter setting. Never carries a header value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?} is not supported; use \"grpc\" or \"http/protobuf\"")]
    UnsupportedProtocol { var: &'static str, value: String },
    #[error("{var}={value:?} is not supported; use \"gzip\" or \"none\"")]
    UnsupportedCompression { var: &'static str, value: String },
    #[error("{var}={value:?} is not a timeout in milliseconds")]
    InvalidTimeout { var: &'static str, value: String },
    #[error("{var}={value:?} is not true or false")]
    InvalidBool { var: &'static str, value: String },
    #[error("{var}: entry {index} is not of the form key=value")]
    MalformedHeader { var: &'static str, index: usize },
    #[error("{var}: header {key:?} has an invalid name or value (bad percent-encoding or characters)")]
    InvalidHeader { var: &'static str, key: String },
    #[error("{var}={value:?} is not a valid endpoint: {reason}")]
    InvalidEndpoint { var: &'static str, value: String, reason: &'static str },
    #[error("{set} is set but {missing} is not; mutual TLS needs both the client certificate and its key")]
    IncompleteClientIdentity { set: &'static str, missing: &'static str },
    #[error("{var} is not valid UTF-8")]
    NotUnicode { var: &'static str },
}

impl ExportConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        check_unicode()?;
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Resolves the traces configuration from `lookup(variable name)`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(match resolve_signal(&TRACES, &lookup, None)? {
            Some(c) => ExportConfig::Otlp(c),
            None => ExportConfig::Stdout,
        })
    }
}

/// Fails on the first exporter variable that is not valid UTF-8.
pub fn check_unicode() -> Result<(), ConfigError> {
    for var in ALL_VARS {
        if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(var) {
            return Err(ConfigError::NotUnicode { var });
        }
    }
    Ok(())
}

/// One signal's settings. With `base`, only used when neither the signal's nor the generic
/// endpoint is set: every setting is then the signal's variable or else `base`'s.
fn resolve_signal(
    vars: &SignalVars,
    lookup: &dyn Fn(&str) -> Option<String>,
    base: Option<&OtlpConfig>,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let get = |var: &'static str| lookup(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v));
    let endpoint_set = get(vars.endpoint).or_else(|| get(GENERIC.endpoint));
    let base = if endpoint_set.is_some() { None } else { base };
    // The signal's variable, else the generic one (unless a base stands in for the generic ones).
    let pick = |signal: &'static str, generic: &'static str| match base {
        Some(_) => get(signal),
        None => get(signal).or_else(|| get(generic)),
    };

    let protocol = match pick(vars.protocol, GENERIC.protocol) {
        None => base.map(|b| b.protocol).unwrap_or_default(),
        Some((var, value)) => match value.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            _ => return Err(ConfigError::UnsupportedProtocol { var, value }),
        },
    };
    let compression = match pick(vars.compression, GENERIC.compression) {
        None => base.map(|b| b.compression).unwrap_or_default(),
        Some((var, value)) => match value.trim().to_ascii_lowercase().as_str() {
            "gzip" => Compression::Gzip,
            "none" => Compression::None,
            _ => return Err(ConfigError::UnsupportedCompression { var, value }),
        },
    };
    let insecure = match pick(vars.insecure, GENERIC.insecure) {
        None => false,
        Some((var, value)) => match value.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(ConfigError::InvalidBool { var, value }),
        },
    };

    let endpoint = match (endpoint_set, base) {
        (Some((var, raw)), _) => {
            resolve_endpoint(var, raw.trim(), protocol, var == GENERIC.endpoint, vars.path, insecure)?
        }
        (None, Some(base)) => match (protocol, base.endpoint.strip_suffix(TRACES.path)) {
            (Protocol::HttpProtobuf, Some(root)) => format!("{root}{}", vars.path),
            _ => base.endpoint.clone(),
        },
        (None, None) => return Ok(None),
    };

    let mut headers = base.map(|b| b.headers.clone()).unwrap_or_default();
    let header_vars: &[&'static str] = if base.is_some() { &[vars.headers] } else { &[GENERIC.headers, vars.headers] };
    for &var in header_vars {
        if let Some((_, value)) = get(var) {
            for (key, value) in parse_headers(var, &value)? {
                headers.retain(|(k, _): &(String, String)| *k != key);
                headers.push((key, value));
            }
        }
    }

    let timeout = match pick(vars.timeout, GENERIC.timeout) {
        None => base.map_or(DEFAULT_TIMEOUT, |b| b.timeout),
        Some((var, value)) => match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => return Err(ConfigError::InvalidTimeout { var, value }),
        },
    };

    let path = |pair: Option<(&'static str, String)>| pair.map(|(var, v)| (var, PathBuf::from(v.trim())));
    let ca = path(pick(vars.certificate, GENERIC.certificate));
    let cert = path(pick(vars.client_certificate, GENERIC.client_certificate));
    let key = path(pick(vars.client_key, GENERIC.client_key));
    match (&cert, &key) {
        (Some((set, _)), None) => {
            return Err(ConfigError::IncompleteClientIdentity { set, missing: GENERIC.client_key });
        }
        (None, Some((set, _))) => {
            return Err(ConfigError::IncompleteClientIdentity { set, missing: GENERIC.client_certificate });
        }
        _ => {}
    }
    let base_tls = base.map(|b| b.tls.clone()).unwrap_or_default();
    let tls = TlsFiles {
        ca: ca.map(|(_, p)| p).or(base_tls.ca),
        client_certificate: cert.map(|(_, p)| p).or(base_tls.client_certificate),
        client_key: key.map(|(_, p)| p).or(base_tls.client_key),
    };

    Ok(Some(OtlpConfig { protocol, endpoint, headers, timeout, compression, tls }))
}

/// Validates the endpoint and applies the per-protocol rules.
fn resolve_endpoint(
    var: &'static str,
    raw: &str,
    protocol: Protocol,
    generic: bool,
    path: &str,
    insecure: bool,
) -> Result<String, ConfigError> {
    let invalid = |reason| ConfigError::InvalidEndpoint { var, value: raw.to_string(), reason };
    let has_scheme = raw.split_once("://").is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']));
    let endpoint = if has_scheme {
        raw.to_string()
    } else if protocol == Protocol::Grpc && insecure {
        format!("http://{raw}")
    } else if protocol == Protocol::Grpc {
        // Spec: without a scheme, INSECURE decides; it is false by default, which means TLS.
        format!("https://{raw}")
    } else {
        return Err(invalid("missing http:// or https:// scheme"));
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| invalid("not a valid URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("scheme must be http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("missing host"));
    }
    if protocol == Protocol::HttpProtobuf && generic {
        // Spec: the generic endpoint is a base URL; the signal path is appended.
        let base = endpoint.strip_suffix('/').unwrap_or(&endpoint);
        return Ok(format!("{base}{path}"));
    }
    Ok(endpoint)
}

/// Parses `k1=v1,k2=v2` with percent-decoded values (and keys). Names are lower-cased.
fn parse_headers(var: &'static str, input: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (index, entry) in input.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (key, value) = entry.split_once('=').ok_or(ConfigError::MalformedHeader { var, index })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::MalformedHeader { var, index });
        }
        let bad = || ConfigError::InvalidHeader { var, key: key.to_string() };
        let key = percent_decode(key).ok_or_else(bad)?.to_ascii_lowercase();
        let value = percent_decode(value.trim()).ok_or_else(bad)?;
        // Validate here so a bad header fails at startup, not on every export.
        http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| bad())?;
        http::HeaderValue::from_str(&value).map_err(|_| bad())?;
        out.push((key, value));
    }
    Ok(out)
}

/// RFC 3986 percent-decoding; `None` on a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<ExportConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ExportConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn otlp(vars: &[(&str, &str)]) -> OtlpConfig {
        match parse(vars) {
            Ok(ExportConfig::Otlp(c)) => c,
            other => panic!("expected otlp config, got {other:?}"),
        }
    }

    #[test]
    fn no_endpoint_is_stdout() {
        assert_eq!(parse(&[]), Ok(ExportConfig::Stdout));
        assert_eq!(parse(&[(ENDPOINT, ""), (PROTOCOL, "grpc")]), Ok(ExportConfig::Stdout));
    }

    #[test]
    fn default_is_grpc_with_generic_endpoint_as_is() {
        let c = otlp(&[(ENDPOINT, "http://collector:4317")]);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://collector:4317");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(c.headers.is_empty());
    }

    #[test]
    fn signal_endpoint_wins_and_is_used_as_is() {
        let c = otlp(&[
            (ENDPOINT, "http://generic:4318"),
            (TRACES_ENDPOINT, "http://traces:4318/custom/path"),
            (PROTOCOL, "http/protobuf"),
        ]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://traces:4318/custom/path");
    }

    #[test]
    fn http_generic_endpoint_gets_signal_path() {
        let c = otlp(&[(ENDPOINT, "http://c:4318"), (PROTOCOL, "http/protobuf")]);
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        let c = otlp(&[(ENDPOINT, "http://c:4318/base/"), (PROTOCOL, "http/protobuf")]);
        assert_eq!(c.endpoint, "http://c:4318/base/v1/traces");
    }

    #[test]
    fn signal_protocol_wins_over_generic() {
        let c = otlp(&[(ENDPOINT, "http://c:4318"), (PROTOCOL, "grpc"), (TRACES_PROTOCOL, "http/protobuf")]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        let c = otlp(&[(ENDPOINT, "http://c:4317"), (PROTOCOL, "http/protobuf"), (TRACES_PROTOCOL, "grpc")]);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://c:4317");
    }

    #[test]
    fn unsupported_protocol_names_variable_and_value() {
        let err = parse(&[(ENDPOINT, "http://c:4318"), (TRACES_PROTOCOL, "http/json")]).unwrap_err();
        assert_eq!(err, ConfigError::UnsupportedProtocol { var: TRACES_PROTOCOL, value: "http/json".into() });
        let msg = err.to_string();
        assert!(msg.contains(TRACES_PROTOCOL) && msg.contains("http/json"), "{msg}");
        // Validated even in stdout mode: a typo should not silently disable export later.
        assert!(parse(&[(PROTOCOL, "thrift")]).is_err());
    }

    #[test]
    fn headers_are_decoded_merged_and_redacted() {
        let c = otlp(&[
            (ENDPOINT, "http://c:4317"),
            (HEADERS, "Authorization=Basic%20c2VjcmV0 , x-tenant=a,x-keep=1"),
            (TRACES_HEADERS, "x-tenant=b%2Cc"),
        ]);
        assert_eq!(
            c.headers,
            vec![
                ("authorization".to_string(), "Basic c2VjcmV0".to_string()),
                ("x-keep".to_string(), "1".to_string()),
                ("x-tenant".to_string(), "b,c".to_string()),
            ]
        );
        for shown in [format!("{c:?}"), c.to_string(), ExportConfig::Otlp(c.clone()).to_string()] {
            assert!(!shown.contains("c2VjcmV0"), "header value leaked: {shown}");
            assert!(shown.contains("authorization"), "{shown}");
        }
    }

    #[test]
    fn bad_headers_are_rejected_without_value() {
        let err = parse(&[(ENDPOINT, "http://c:4317"), (HEADERS, "a=1,novalue")]).unwrap_err();
        assert_eq!(err, ConfigError::MalformedHeader { var: HEADERS, index: 1 });
        let err = parse(&[(ENDPOINT, "http://c:4317"), (TRACES_HEADERS, "key=sec%zzret")]).unwrap_err();
        assert_eq!(err, ConfigError::InvalidHeader { var: TRACES_HEADERS, key: "key".into() });
        assert!(!err.to_string().contains("sec"));
        assert!(parse(&[(ENDPOINT, "http://c:4317"), (HEADERS, "bad key=1")]).is_err());
    }

    #[test]
    fn timeout_precedence_and_validation() {
        let c = otlp(&[(ENDPOINT, "http://c:4317"), (TIMEOUT, "2500")]);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        let c = otlp(&[(ENDPOINT, "http://c:4317"), (TIMEOUT, "2500"), (TRACES_TIMEOUT, "700")]);
        assert_eq!(c.timeout, Duration::from_millis(700));
        let err = parse(&[(ENDPOINT, "http://c:4317"), (TIMEOUT, "10s")]).unwrap_err();
        assert_eq!(err, ConfigError::InvalidTimeout { var: TIMEOUT, value: "10s".into() });
    }

    #[test]
    fn endpoint_validation() {
        let err = parse(&[(ENDPOINT, "ftp://c:4317")]).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidEndpoint { var: ENDPOINT, .. }), "{err}");
        assert!(parse(&[(ENDPOINT, "c:4318"), (PROTOCOL, "http/protobuf")]).is_err());
        assert!(parse(&[(ENDPOINT, "http://")]).is_err());
        // gRPC without a scheme: TLS unless INSECURE is true.
        assert_eq!(otlp(&[(TRACES_ENDPOINT, "c:4317")]).endpoint, "https://c:4317");
        let c = otlp(&[(TRACES_ENDPOINT, "c:4317"), (INSECURE, "TRUE")]);
        assert_eq!(c.endpoint, "http://c:4317");
        let c = otlp(&[(TRACES_ENDPOINT, "c:4317"), (INSECURE, "true"), (TRACES_INSECURE, "false")]);
        assert_eq!(c.endpoint, "https://c:4317", "the signal's variable wins");
        let err = parse(&[(ENDPOINT, "c:4317"), (INSECURE, "yes")]).unwrap_err();
        assert_eq!(err, ConfigError::InvalidBool { var: INSECURE, value: "yes".into() });
        let c = otlp(&[(ENDPOINT, "https://c:4318"), (PROTOCOL, "http/protobuf")]);
        assert_eq!(c.endpoint, "https://c:4318/v1/traces");
        assert!(c.is_tls());
    }

    #[test]
    fn tls_files_and_compression() {
        let c = otlp(&[(ENDPOINT, "https://c:4317")]);
        assert_eq!((c.tls.clone(), c.compression), (TlsFiles::default(), Compression::None), "system roots, no gzip");
        let c = otlp(&[
            (ENDPOINT, "https://c:4317"),
            (CERTIFICATE, "/generic/ca.pem"),
            (TRACES.certificate, "/traces/ca.pem"),
            (CLIENT_CERTIFICATE, "/c.pem"),
            (CLIENT_KEY, " /k.pem "),
            (COMPRESSION, "gzip"),
            (METRICS.compression, "none"),
        ]);
        assert_eq!(c.tls.ca.as_deref(), Some(std::path::Path::new("/traces/ca.pem")));
        assert_eq!(c.tls.client_certificate.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(c.tls.client_key.as_deref(), Some(std::path::Path::new("/k.pem")));
        assert_eq!(c.compression, Compression::Gzip, "METRICS_ variables do not touch traces");
        let shown = c.to_string();
        assert!(shown.contains("gzip") && shown.contains("/traces/ca.pem") && !shown.contains("/k.pem"), "{shown}");
        let err = parse(&[(ENDPOINT, "https://c:4317"), (TRACES.compression, "zstd")]).unwrap_err();
        assert_eq!(err, ConfigError::UnsupportedCompression { var: TRACES.compression, value: "zstd".into() });
        let err = parse(&[(ENDPOINT, "https://c:4317"), (TRACES.client_certificate, "/c.pem")]).unwrap_err();
        assert_eq!(err, ConfigError::IncompleteClientIdentity { set: TRACES.client_certificate, missing: CLIENT_KEY });
    }

    #[test]
    fn metrics_variables() {
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let m = OtlpConfig::metrics_from_lookup(
            lookup(&[(ENDPOINT, "https://c:4318"), (PROTOCOL, "http/protobuf"), (METRICS.timeout, "1500")]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!((m.endpoint.as_str(), m.timeout), ("https://c:4318/v1/metrics", Duration::from_millis(1500)));
        let m = OtlpConfig::metrics_from_lookup(
            lookup(&[(TRACES_ENDPOINT, "http://t:4317"), (HEADERS, "a=1"), (METRICS.headers, "b=2")]),
            None,
        );
        assert_eq!(m, Ok(None), "no metrics or generic endpoint and no traces collector");
        let m = OtlpConfig::metrics_from_lookup(lookup(&[(METRICS.endpoint, "m:4317")]), None).unwrap().unwrap();
        assert_eq!(m.endpoint, "https://m:4317");
        assert_eq!(ALL_VARS.iter().collect::<std::collections::HashSet<_>>().len(), 27, "no variable twice");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%3D").as_deref(), Some("a b="));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
