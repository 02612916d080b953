//! gRPC (grpc-go) spans: what the uprobes of `tracer-ebpf/src/grpc.rs` report, turned into
//! OpenTelemetry RPC spans, and what those probes need from a binary.
//!
//! The kernel decides every id (a client call is the child of the server span its goroutine, or
//! a goroutine that started it, is handling; a server call is the child of the traced client
//! call on this host that opened its HTTP/2 stream, paired in the kernel by connection and
//! stream id before the first byte of the call is written), so spans go straight to export.
//! Attributes follow the OpenTelemetry RPC conventions: span name `package.Service/Method`,
//! `rpc.system` = `grpc`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`.

use crate::clock::Clock;
use crate::events::DecodeError;
use crate::gobin::GoBinary;
use crate::model::{Attr, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};
use std::mem::{offset_of, size_of};
use std::net::Ipv4Addr;
use tracer_common::{
    ConnTuple, GrpcEvent, GrpcProc, GRPC_CLIENT, GRPC_HAS_STATUS, GRPC_HAS_TUPLE, GRPC_METHOD_MAX,
    GRPC_NONE, GRPC_REMOTE_PARENT, GRPC_SERVER, GRPC_STREAM,
};

/// A finished gRPC call as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    pub tgid: u32,
    pub tid: u32,
    pub kind: SpanKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    /// The parent is a client span of another process on this host.
    pub parent_is_remote: bool,
    /// `/package.Service/Method` as the program had it (possibly cut at 128 bytes).
    pub method: String,
    /// gRPC status code, when seen.
    pub status: Option<u32>,
    pub streaming: bool,
    /// Local and remote addresses of the connection, when read.
    pub tuple: Option<ConnTuple>,
    pub stream_id: u32,
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    b[off..off + N].try_into().expect("length checked")
}

/// Decodes a `GrpcEvent` record (header already read).
pub fn decode(b: &[u8], end_ns: u64, tgid: u32, tid: u32) -> Result<GrpcCall, DecodeError> {
    let n = size_of::<GrpcEvent>();
    if b.len() < n {
        return Err(DecodeError::Short { len: b.len(), need: n });
    }
    let kind = match b[offset_of!(GrpcEvent, kind)] {
        GRPC_CLIENT => SpanKind::Client,
        GRPC_SERVER => SpanKind::Server,
        k => return Err(DecodeError::Inconsistent { field: "grpc kind", value: u32::from(k), len: 2 }),
    };
    let flags = b[offset_of!(GrpcEvent, flags)];
    let method_len = u16::from_ne_bytes(arr(b, offset_of!(GrpcEvent, method_len)));
    if method_len as usize > GRPC_METHOD_MAX {
        return Err(DecodeError::Inconsistent {
            field: "grpc method_len",
            value: u32::from(method_len),
            len: GRPC_METHOD_MAX as u32,
        });
    }
    let m = offset_of!(GrpcEvent, method);
    let method = String::from_utf8_lossy(&b[m..m + method_len as usize]).into_owned();
    let parent: [u8; 8] = arr(b, offset_of!(GrpcEvent, parent_id));
    let t = offset_of!(GrpcEvent, tuple);
    let tuple = ConnTuple {
        family: u16::from_ne_bytes(arr(b, t + offset_of!(ConnTuple, family))),
        sport: u16::from_ne_bytes(arr(b, t + offset_of!(ConnTuple, sport))),
        dport: u16::from_ne_bytes(arr(b, t + offset_of!(ConnTuple, dport))),
        _pad: 0,
        saddr: arr(b, t + offset_of!(ConnTuple, saddr)),
        daddr: arr(b, t + offset_of!(ConnTuple, daddr)),
    };
    Ok(GrpcCall {
        tgid,
        tid,
        kind,
        start_ns: u64::from_ne_bytes(arr(b, offset_of!(GrpcEvent, start_ns))),
        end_ns,
        trace_id: arr(b, offset_of!(GrpcEvent, trace_id)),
        span_id: arr(b, offset_of!(GrpcEvent, span_id)),
        parent_id: (parent != [0; 8]).then_some(parent),
        parent_is_remote: flags & GRPC_REMOTE_PARENT != 0,
        method,
        status: (flags & GRPC_HAS_STATUS != 0)
            .then(|| u32::from_ne_bytes(arr(b, offset_of!(GrpcEvent, status)))),
        streaming: flags & GRPC_STREAM != 0,
        tuple: (flags & GRPC_HAS_TUPLE != 0).then_some(tuple),
        stream_id: u32::from_ne_bytes(arr(b, offset_of!(GrpcEvent, stream_id))),
    })
}

/// `(service, method)` of `/package.Service/Method`.
pub fn split_method(full: &str) -> (Option<&str>, Option<&str>) {
    let s = full.strip_prefix('/').unwrap_or(full);
    match s.rsplit_once('/') {
        Some((svc, m)) if !svc.is_empty() && !m.is_empty() => (Some(svc), Some(m)),
        _ => (None, None),
    }
}

/// Status codes that mark a server span as an error (OpenTelemetry RPC conventions): UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. Any non-OK code marks a
/// client span.
const SERVER_ERRORS: &[u32] = &[2, 4, 12, 13, 14, 15];

const CODE_NAMES: [&str; 17] = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

impl GrpcCall {
    pub fn to_span(&self, clock: &Clock) -> SpanRecord {
        let (service, method) = split_method(&self.method);
        let name = match (service, method) {
            (Some(s), Some(m)) => format!("{s}/{m}"),
            _ if self.method.is_empty() => "grpc".to_owned(),
            _ => self.method.trim_start_matches('/').to_owned(),
        };
        let mut attrs = vec![Attr::str("rpc.system", "grpc")];
        if let Some(s) = service {
            attrs.push(Attr::str("rpc.service", s));
        }
        if let Some(m) = method {
            attrs.push(Attr::str("rpc.method", m));
        }
        if let Some(code) = self.status {
            attrs.push(Attr::int("rpc.grpc.status_code", i64::from(code)));
        }
        if let Some(t) = &self.tuple {
            let local = Ipv4Addr::new(t.saddr[0], t.saddr[1], t.saddr[2], t.saddr[3]).to_string();
            let remote = Ipv4Addr::new(t.daddr[0], t.daddr[1], t.daddr[2], t.daddr[3]).to_string();
            let (server, sport, peer, pport) = match self.kind {
                SpanKind::Client => (remote.clone(), t.dport, remote, t.dport),
                SpanKind::Server => (local, t.sport, remote, t.dport),
            };
            attrs.push(Attr::str("server.address", server));
            attrs.push(Attr::int("server.port", i64::from(sport)));
            attrs.push(Attr::str("network.peer.address", peer));
            attrs.push(Attr::int("network.peer.port", i64::from(pport)));
        }
        let error = match (self.kind, self.status) {
            (_, None | Some(0)) => false,
            (SpanKind::Client, Some(_)) => true,
            (SpanKind::Server, Some(c)) => SERVER_ERRORS.contains(&c),
        };
        let status = if error {
            let c = self.status.unwrap_or(2);
            SpanStatus::Error(CODE_NAMES.get(c as usize).copied().unwrap_or("UNKNOWN").to_owned())
        } else {
            SpanStatus::Unset
        };
        let end = self.end_ns.max(self.start_ns);
        SpanRecord {
            trace_id: TraceId(self.trace_id),
            span_id: SpanId(self.span_id),
            parent_span_id: self.parent_id.map(SpanId),
            parent_is_remote: self.parent_is_remote,
            name,
            kind: self.kind,
            start: clock.to_system_time(self.start_ns),
            end: clock.to_system_time(end),
            attributes: attrs,
            status,
            pid: self.tgid,
        }
    }
}

pub const SERVER_HANDLE_STREAM: &str = "google.golang.org/grpc.(*Server).handleStream";
pub const CLIENT_INVOKE: &str = "google.golang.org/grpc.(*ClientConn).Invoke";
pub const CLIENT_NEW_STREAM: &str = "google.golang.org/grpc.(*ClientConn).NewStream";
pub const CLIENT_STREAM_FINISH: &str = "google.golang.org/grpc.(*clientStream).finish";
const TRANSPORT: &str = "google.golang.org/grpc/internal/transport";

/// grpc-go struct fields the probes read: `(struct, field)`, Go DWARF names. Binaries without
/// DWARF take them from `grpc_offsets_table.rs`, keyed by their grpc-go module version (the
/// `net` fields the probes also read are in the Go-version table, `gobin::offsets`).
/// `ServerStream.Stream` exists from grpc-go 1.69 only.
pub const FIELDS: &[(&str, &str)] = &[
    ("google.golang.org/grpc/internal/transport.ServerStream", "Stream"),
    ("google.golang.org/grpc/internal/transport.Stream", "id"),
    ("google.golang.org/grpc/internal/transport.Stream", "method"),
    ("google.golang.org/grpc/internal/transport.http2Server", "conn"),
    ("google.golang.org/grpc/internal/transport.loopyWriter", "conn"),
    ("google.golang.org/grpc/internal/transport.headerFrame", "streamID"),
    ("google.golang.org/grpc/internal/status.Error", "s"),
    ("google.golang.org/grpc/internal/status.Status", "s"),
    ("google.golang.org/genproto/googleapis/rpc/status.Status", "Code"),
];

pub const GRPC_MODULE: &str = "google.golang.org/grpc";

mod table {
    include!("grpc_offsets_table.rs");
}

/// `(major, minor, patch)` of a module version `v1.70.0` (pre-release suffixes ignored).
pub fn module_semver(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.strip_prefix('v')?;
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// The grpc-go version a binary was built with.
pub fn grpc_version(bin: &GoBinary) -> Option<(u32, u32, u32)> {
    bin.build.deps.iter().find(|m| m.path == GRPC_MODULE).and_then(|m| module_semver(&m.version))
}

/// Offset of `strukt.field` for grpc-go `version` from the generated table: the row of its
/// minor release, else of the newest listed release older than it; none for releases older
/// than every row or newer than the newest (grpc-go reshapes its internals often: 1.85 changed
/// `headerFrame`), so an unmeasured layout is never guessed.
pub fn table_lookup(strukt: &str, field: &str, version: (u32, u32, u32)) -> Option<u64> {
    let all = || table::TABLE.iter().filter_map(|(_, _, v, _)| module_semver(v).map(|(a, b, _)| (a, b)));
    if all().max().is_none_or(|newest| (version.0, version.1) > newest) {
        return None;
    }
    let rows: Vec<_> = all().filter(|r| *r <= (version.0, version.1)).collect();
    // The newest release measured at or below this one decides, even when the field is
    // missing there (a field a release removed must not come from an older row).
    let newest = rows.into_iter().max()?;
    table::TABLE
        .iter()
        .filter(|(s, f, v, _)| {
            *s == strukt && *f == field && module_semver(v).map(|(a, b, _)| (a, b)) == Some(newest)
        })
        .map(|(_, _, _, off)| *off)
        .next()
}

/// Offset of a field the gRPC probes read: DWARF, else the Go-version table (`net` fields), else
/// the grpc-go-version table.
fn field_offset(bin: &GoBinary, strukt: &str, field: &str) -> Option<u64> {
    bin.field_offset(strukt, field)
        .map(|(o, _)| o)
        .or_else(|| table_lookup(strukt, field, grpc_version(bin)?))
}

/// `tracer go-inspect --grpc-offsets-table BINARIES`: prints the table source measured from
/// the binaries' DWARF, one row per field present, keyed by each binary's grpc-go version.
pub fn offsets_table_command(binaries: &[std::path::PathBuf]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut rows = Vec::new();
    for path in binaries {
        let bin = GoBinary::open(path).with_context(|| path.display().to_string())?;
        let version = bin
            .build
            .deps
            .iter()
            .find(|m| m.path == GRPC_MODULE)
            .map(|m| m.version.clone())
            .with_context(|| format!("{}: does not link {GRPC_MODULE}", path.display()))?;
        for (s, f) in FIELDS {
            match bin.dwarf_field_offset(s, f)? {
                Some(off) => rows.push((s.to_string(), f.to_string(), version.clone(), off)),
                // Only ServerStream is younger than the oldest supported release.
                None if s.ends_with(".ServerStream") => {}
                None => anyhow::bail!("{}: no DWARF offset for {s}.{f}", path.display()),
            }
        }
    }
    rows.sort_by_key(|(s, f, v, _)| (s.clone(), f.clone(), module_semver(v)));
    let mut out = String::from(
        "// Generated by `cargo xtask go-offsets` from real builds against each grpc-go release; do not edit.\n\
         // (struct, field, grpc-go release the offset was measured on, offset in bytes)\n\
         pub const TABLE: &[(&str, &str, &str, u64)] = &[\n",
    );
    for (s, f, v, off) in rows {
        out.push_str(&format!("    ({s:?}, {f:?}, {v:?}, {off}),\n"));
    }
    out.push_str("];\n");
    print!("{out}");
    Ok(())
}

/// Programs of `tracer-ebpf/src/grpc.rs`.
pub const PROGRAMS: &[&str] = &[
    "grpc_invoke",
    "grpc_invoke_ret",
    "grpc_new_stream",
    "grpc_new_stream_ret",
    "grpc_stream_finish",
    "grpc_execute_and_put",
    "grpc_originate_stream",
    "grpc_handle_stream",
    "grpc_write_status",
    "grpc_handle_stream_ret",
];

/// Probes and offsets for a grpc-go binary: `Ok(None)` when it does not link grpc-go, `Err`
/// when it does but something the probes need is missing.
pub fn plan(bin: &GoBinary) -> Result<Option<(GrpcProc, Vec<(&'static str, Vec<u64>)>)>, String> {
    if bin.func(CLIENT_INVOKE).is_none() && bin.func(SERVER_HANDLE_STREAM).is_none() {
        return Ok(None);
    }
    let off = |s: &str, f: &str| {
        field_offset(bin, s, f).ok_or_else(|| format!("no offset of {s}.{f} (no DWARF, not in the tables)"))
    };
    let t = |n: &str| format!("{TRANSPORT}.{n}");
    let hash = |sym: &str| {
        bin.symbol_bytes(sym, 16, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0)
    };
    let proc = GrpcProc {
        // grpc >= 1.69 hands the handler a *ServerStream embedding *Stream.
        server_stream_stream: field_offset(bin, &t("ServerStream"), "Stream").unwrap_or(GRPC_NONE),
        stream_id: off(&t("Stream"), "id")?,
        stream_method: off(&t("Stream"), "method")?,
        server_conn: off(&t("http2Server"), "conn")?,
        loopy_conn: off(&t("loopyWriter"), "conn")?,
        hdr_stream_id: off(&t("headerFrame"), "streamID")?,
        netfd_laddr: off("net.netFD", "laddr")?,
        netfd_raddr: off("net.netFD", "raddr")?,
        tcpaddr_ip: off("net.TCPAddr", "IP")?,
        tcpaddr_port: off("net.TCPAddr", "Port")?,
        status_err_s: off("google.golang.org/grpc/internal/status.Error", "s")?,
        status_s: off("google.golang.org/grpc/internal/status.Status", "s")?,
        spb_code: off("google.golang.org/genproto/googleapis/rpc/status.Status", "Code")?,
        status_err_hash: hash("go:itab.*google.golang.org/grpc/internal/status.Error,error"),
        errstring_hash: hash("go:itab.*errors.errorString,error"),
    };
    let entry = |name: &str| bin.body_offset(name).map(|o| vec![o]).ok_or_else(|| format!("no {name}"));
    let rets = |name: &str| match bin.ret_offsets(name) {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(format!("no RET instruction found in {name}")),
    };
    let write_status = [t("(*http2Server).writeStatus"), t("(*http2Server).WriteStatus")]
        .into_iter()
        .find(|n| bin.func(n).is_some())
        .ok_or("no (*http2Server).writeStatus")?;
    let points = vec![
        ("grpc_invoke", entry(CLIENT_INVOKE)?),
        ("grpc_invoke_ret", rets(CLIENT_INVOKE)?),
        ("grpc_new_stream", entry(CLIENT_NEW_STREAM)?),
        ("grpc_new_stream_ret", rets(CLIENT_NEW_STREAM)?),
        ("grpc_stream_finish", entry(CLIENT_STREAM_FINISH)?),
        ("grpc_execute_and_put", entry(&t("(*controlBuffer).executeAndPut"))?),
        ("grpc_originate_stream", entry(&t("(*loopyWriter).originateStream"))?),
        ("grpc_handle_stream", entry(SERVER_HANDLE_STREAM)?),
        ("grpc_write_status", entry(&write_status)?),
        ("grpc_handle_stream_ret", rets(SERVER_HANDLE_STREAM)?),
    ];
    Ok(Some((proc, points)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn record(kind: u8, flags: u8, method: &str, status: u32) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<GrpcEvent>()];
        b[offset_of!(GrpcEvent, start_ns)..][..8].copy_from_slice(&100u64.to_ne_bytes());
        b[offset_of!(GrpcEvent, trace_id)..][..16].copy_from_slice(&[7; 16]);
        b[offset_of!(GrpcEvent, span_id)..][..8].copy_from_slice(&[8; 8]);
        b[offset_of!(GrpcEvent, parent_id)..][..8].copy_from_slice(&[9; 8]);
        let t = offset_of!(GrpcEvent, tuple);
        b[t..][..2].copy_from_slice(&2u16.to_ne_bytes());
        b[t + 2..][..2].copy_from_slice(&40000u16.to_ne_bytes());
        b[t + 4..][..2].copy_from_slice(&50051u16.to_ne_bytes());
        b[t + 8..][..4].copy_from_slice(&[127, 0, 0, 1]);
        b[t + 24..][..4].copy_from_slice(&[127, 0, 0, 2]);
        b[offset_of!(GrpcEvent, status)..][..4].copy_from_slice(&status.to_ne_bytes());
        b[offset_of!(GrpcEvent, kind)] = kind;
        b[offset_of!(GrpcEvent, flags)] = flags;
        b[offset_of!(GrpcEvent, method_len)..][..2].copy_from_slice(&(method.len() as u16).to_ne_bytes());
        b[offset_of!(GrpcEvent, method)..][..method.len()].copy_from_slice(method.as_bytes());
        b
    }

    #[test]
    fn decodes_and_names_a_client_call() {
        let b = record(GRPC_CLIENT, GRPC_HAS_STATUS | GRPC_HAS_TUPLE, "/grpc.health.v1.Health/Check", 5);
        let c = decode(&b, 300, 11, 12).unwrap();
        assert_eq!(c.kind, SpanKind::Client);
        assert_eq!(c.status, Some(5));
        assert_eq!(c.parent_id, Some([9; 8]));
        assert!(!c.parent_is_remote && !c.streaming);
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let s = c.to_span(&clock);
        assert_eq!(s.name, "grpc.health.v1.Health/Check");
        assert_eq!(s.end.duration_since(s.start).unwrap(), Duration::from_nanos(200));
        let attr = |k: &str| s.attr(k).map(ToString::to_string);
        assert_eq!(attr("rpc.system").as_deref(), Some("\"grpc\""));
        assert_eq!(attr("rpc.service").as_deref(), Some("\"grpc.health.v1.Health\""));
        assert_eq!(attr("rpc.method").as_deref(), Some("\"Check\""));
        assert_eq!(attr("rpc.grpc.status_code").as_deref(), Some("5"));
        assert_eq!(attr("server.address").as_deref(), Some("\"127.0.0.2\""));
        assert_eq!(attr("server.port").as_deref(), Some("50051"));
        // NOT_FOUND is an error for the caller ...
        assert_eq!(s.status, SpanStatus::Error("NOT_FOUND".into()));
    }

    #[test]
    fn server_status_semantics() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let span = |code| {
            let b = record(GRPC_SERVER, GRPC_HAS_STATUS | GRPC_REMOTE_PARENT | GRPC_STREAM | GRPC_HAS_TUPLE, "/a.B/C", code);
            decode(&b, 300, 1, 1).unwrap().to_span(&clock)
        };
        // ... but not for the server, which answered correctly.
        assert_eq!(span(5).status, SpanStatus::Unset);
        assert_eq!(span(0).status, SpanStatus::Unset);
        assert_eq!(span(14).status, SpanStatus::Error("UNAVAILABLE".into()));
        let s = span(0);
        assert!(s.parent_is_remote);
        assert_eq!(s.attr("server.port").map(ToString::to_string).as_deref(), Some("40000"));
    }

    #[test]
    fn rejects_bad_records() {
        let b = record(GRPC_CLIENT, 0, "/a.B/C", 0);
        assert!(matches!(decode(&b[..100], 1, 1, 1), Err(DecodeError::Short { .. })));
        let b = record(3, 0, "/a.B/C", 0);
        assert!(decode(&b, 1, 1, 1).is_err());
        let mut b = record(GRPC_CLIENT, 0, "/a.B/C", 0);
        b[offset_of!(GrpcEvent, method_len)..][..2].copy_from_slice(&500u16.to_ne_bytes());
        assert!(decode(&b, 1, 1, 1).is_err());
    }

    #[test]
    fn table_covers_every_field_across_the_layout_changes() {
        for v in [(1, 59, 0), (1, 60, 1), (1, 63, 0), (1, 68, 2), (1, 69, 0), (1, 70, 3)] {
            for (s, f) in FIELDS {
                let got = table_lookup(s, f, v);
                if s.ends_with(".ServerStream") {
                    // The handler gets a *ServerStream embedding *Stream from 1.69 on.
                    assert_eq!(got.is_some(), v >= (1, 69, 0), "{s}.{f} for {v:?}");
                } else {
                    assert!(got.is_some(), "{s}.{f} missing for {v:?}");
                }
            }
        }
        assert_eq!(table_lookup(FIELDS[1].0, FIELDS[1].1, (1, 58, 0)), None, "older than every row");
        assert_eq!(table_lookup(FIELDS[1].0, FIELDS[1].1, (1, 85, 0)), None, "newer than every row");
        // Layout facts from the grpc-go sources: Stream starts with `id uint32`, then a
        // context.Context, then `method string`; headerFrame starts with `streamID uint32`.
        let t = |s: &str, f| table_lookup(&format!("google.golang.org/grpc/internal/transport.{s}"), f, (1, 70, 0));
        assert_eq!(t("Stream", "id"), Some(0));
        assert_eq!(t("Stream", "method"), Some(24));
        assert_eq!(t("headerFrame", "streamID"), Some(0));
        assert_eq!(t("ServerStream", "Stream"), Some(0));
    }

    #[test]
    fn module_versions() {
        assert_eq!(module_semver("v1.70.0"), Some((1, 70, 0)));
        assert_eq!(module_semver("v1.86.0-dev"), Some((1, 86, 0)));
        assert_eq!(module_semver("v0.0.0-20241202173237-19429a94021a"), Some((0, 0, 0)));
        assert_eq!(module_semver("(devel)"), None);
    }

    #[test]
    fn splits_methods() {
        assert_eq!(split_method("/pkg.Svc/M"), (Some("pkg.Svc"), Some("M")));
        assert_eq!(split_method("pkg.Svc/M"), (Some("pkg.Svc"), Some("M")));
        assert_eq!(split_method("/nomethod"), (None, None));
        assert_eq!(split_method(""), (None, None));
    }
}
