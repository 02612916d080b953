//! Exporter configuration from the standard `OTEL_EXPORTER_OTLP_*` environment variables.
//!
//! Parsing is a pure function over a lookup closure ([`ExportConfig::from_lookup`]) so the
//! precedence and validation rules are unit-tested without touching the process environment;
//! [`ExportConfig::from_env`] is the thin wrapper the agent calls.
//!
//! Rules (see the OpenTelemetry "OTLP exporter" specification):
//!
//! * Endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) over
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (for `http/protobuf`, `/v1/traces` is appended). With
//!   neither set, spans go to stdout ([`ExportConfig::Stdout`]).
//! * Protocol: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` over `OTEL_EXPORTER_OTLP_PROTOCOL`;
//!   `grpc` (default) or `http/protobuf`. Anything else (e.g. `http/json`) is an error.
//! * Headers: `OTEL_EXPORTER_OTLP_HEADERS`, overridden key by key by
//!   `OTEL_EXPORTER_OTLP_TRACES_HEADERS`; comma-separated `key=value`, values percent-decoded.
//!   Header values are never logged or shown by `Debug`/`Display` (they are often credentials).
//! * Timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` over `OTEL_EXPORTER_OTLP_TIMEOUT`, in
//!   milliseconds, default 10 s.
//! * A gRPC endpoint without a scheme is `http://` only when `OTEL_EXPORTER_OTLP_[TRACES_]INSECURE`
//!   is `true`; this build has no TLS support, so `https://` endpoints are rejected up front
//!   instead of failing on every export.
//!
//! Empty values count as unset, as the specification requires.

use std::fmt;
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

/// Every variable [`ExportConfig::from_lookup`] reads.
pub const ALL_VARS: [&str; 10] = [
    ENDPOINT,
    TRACES_ENDPOINT,
    PROTOCOL,
    TRACES_PROTOCOL,
    HEADERS,
    TRACES_HEADERS,
    TIMEOUT,
    TRACES_TIMEOUT,
    INSECURE,
    TRACES_INSECURE,
];

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
}

impl OtlpConfig {
    /// A configuration with no headers and the default timeout.
    pub fn new(protocol: Protocol, endpoint: impl Into<String>) -> Self {
        Self { protocol, endpoint: endpoint.into(), headers: Vec::new(), timeout: DEFAULT_TIMEOUT }
    }

    fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
}

impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint)
            .field("headers", &format_args!("{:?} (values redacted)", self.header_names()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Display for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "otlp {} {} (timeout {:?}", self.protocol, self.endpoint, self.timeout)?;
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
    #[error("{var}={value:?} is not a timeout in milliseconds")]
    InvalidTimeout { var: &'static str, value: String },
    #[error("{var}: entry {index} is not of the form key=value")]
    MalformedHeader { var: &'static str, index: usize },
    #[error("{var}: header {key:?} has an invalid name or value (bad percent-encoding or characters)")]
    InvalidHeader { var: &'static str, key: String },
    #[error("{var}={value:?} is not a valid endpoint: {reason}")]
    InvalidEndpoint { var: &'static str, value: String, reason: &'static str },
    #[error("{var} is not valid UTF-8")]
    NotUnicode { var: &'static str },
}

impl ExportConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        for var in ALL_VARS {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(var) {
                return Err(ConfigError::NotUnicode { var });
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Resolves the configuration from `lookup(variable name)`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.trim().is_empty());
        let first = |signal: &'static str, generic: &'static str| {
            get(signal).map(|v| (signal, v)).or_else(|| get(generic).map(|v| (generic, v)))
        };

        let protocol = match first(TRACES_PROTOCOL, PROTOCOL) {
            None => Protocol::Grpc,
            Some((var, value)) => match value.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => return Err(ConfigError::UnsupportedProtocol { var, value }),
            },
        };

        let Some((endpoint_var, raw_endpoint)) = first(TRACES_ENDPOINT, ENDPOINT) else {
            return Ok(ExportConfig::Stdout);
        };
        let raw_endpoint = raw_endpoint.trim().to_string();
        let insecure = first(TRACES_INSECURE, INSECURE).is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("true"));
        let endpoint = resolve_endpoint(endpoint_var, &raw_endpoint, protocol, endpoint_var == ENDPOINT, insecure)?;

        let mut headers = Vec::new();
        for var in [HEADERS, TRACES_HEADERS] {
            if let Some(value) = get(var) {
                for (key, value) in parse_headers(var, &value)? {
                    headers.retain(|(k, _): &(String, String)| *k != key);
                    headers.push((key, value));
                }
            }
        }

        let timeout = match first(TRACES_TIMEOUT, TIMEOUT) {
            None => DEFAULT_TIMEOUT,
            Some((var, value)) => match value.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(ConfigError::InvalidTimeout { var, value }),
            },
        };

        Ok(ExportConfig::Otlp(OtlpConfig { protocol, endpoint, headers, timeout }))
    }
}

/// Validates the endpoint and applies the per-protocol rules.
fn resolve_endpoint(
    var: &'static str,
    raw: &str,
    protocol: Protocol,
    generic: bool,
    insecure: bool,
) -> Result<String, ConfigError> {
    let invalid = |reason| ConfigError::InvalidEndpoint { var, value: raw.to_string(), reason };
    let has_scheme = raw.split_once("://").is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']));
    let endpoint = if has_scheme {
        raw.to_string()
    } else if protocol == Protocol::Grpc && insecure {
        format!("http://{raw}")
    } else if protocol == Protocol::Grpc {
        return Err(invalid(
            "no scheme and OTEL_EXPORTER_OTLP_INSECURE is not true, which means TLS; \
             this build has no TLS support, use http://",
        ));
    } else {
        return Err(invalid("missing http:// scheme"));
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| invalid("not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid("https:// needs TLS, which this build does not support; use http://"));
        }
        _ => return Err(invalid("scheme must be http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("missing host"));
    }
    if protocol == Protocol::HttpProtobuf && generic {
        // Spec: the generic endpoint is a base URL; the signal path is appended.
        let base = endpoint.strip_suffix('/').unwrap_or(&endpoint);
        return Ok(format!("{base}/v1/traces"));
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
        let err = parse(&[(ENDPOINT, "https://c:4317")]).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidEndpoint { var: ENDPOINT, .. }), "{err}");
        assert!(parse(&[(TRACES_ENDPOINT, "c:4317")]).is_err());
        assert!(parse(&[(ENDPOINT, "c:4318"), (PROTOCOL, "http/protobuf")]).is_err());
        assert!(parse(&[(ENDPOINT, "http://")]).is_err());
        let c = otlp(&[(TRACES_ENDPOINT, "c:4317"), (INSECURE, "TRUE")]);
        assert_eq!(c.endpoint, "http://c:4317");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%3D").as_deref(), Some("a b="));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
