//! grpc-go probes (kernel side: `tracer-ebpf/src/go/grpc.rs`): what they read from a binary
//! and where they attach. Offsets come from DWARF or, for binaries without it, from a table
//! keyed by grpc-go release (`cargo xtask go-offsets`).

use tracer_common::{GRPC_NONE, GrpcProc, names::programs as p};

use super::gobin::GoBinary;

pub const SERVER_HANDLE_STREAM: &str = "google.golang.org/grpc.(*Server).handleStream";
pub const CLIENT_INVOKE: &str = "google.golang.org/grpc.(*ClientConn).Invoke";
pub const CLIENT_NEW_STREAM: &str = "google.golang.org/grpc.(*ClientConn).NewStream";
pub const CLIENT_STREAM_FINISH: &str = "google.golang.org/grpc.(*clientStream).finish";
const TRANSPORT: &str = "google.golang.org/grpc/internal/transport";

/// Every function the grpc-go probes attach to (one of the two status writers exists).
pub const FUNCTIONS: &[&str] = &[
    CLIENT_INVOKE,
    CLIENT_NEW_STREAM,
    CLIENT_STREAM_FINISH,
    SERVER_HANDLE_STREAM,
    "google.golang.org/grpc/internal/transport.(*controlBuffer).executeAndPut",
    "google.golang.org/grpc/internal/transport.(*loopyWriter).originateStream",
    "google.golang.org/grpc/internal/transport.(*http2Server).writeStatus",
    "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus",
];

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
        .filter(|(s, f, v, _)| *s == strukt && *f == field && module_semver(v).map(|(a, b, _)| (a, b)) == Some(newest))
        .map(|(_, _, _, off)| *off)
        .next()
}

/// Offset of a field the gRPC probes read: DWARF, else the Go-version table (`net` fields), else
/// the grpc-go-version table.
fn field_offset(bin: &GoBinary, strukt: &str, field: &str) -> Option<u64> {
    bin.field_offset(strukt, field).map(|(o, _)| o).or_else(|| table_lookup(strukt, field, grpc_version(bin)?))
}

/// The grpc-go module version a binary links, as its build info names it.
pub fn module_version(bin: &GoBinary) -> Option<&str> {
    bin.build.deps.iter().find(|m| m.path == GRPC_MODULE).map(|m| m.version.as_str())
}

/// Why the offset of `strukt.field` is not known, exactly: the binary's DWARF lacks the field
/// (the release changed its internals), or there is no DWARF and the release is outside the
/// measured tables.
fn missing_field(bin: &GoBinary, strukt: &str, field: &str) -> String {
    let version = module_version(bin).unwrap_or("(version unknown)");
    if bin.has_dwarf() {
        return format!("{strukt}.{field} is not in the binary's DWARF: grpc-go {version} has no such field");
    }
    let measured = table::TABLE.iter().filter_map(|(_, _, v, _)| module_semver(v).map(|s| (s, *v)));
    let oldest = measured.clone().min_by_key(|(s, _)| *s).map_or("-", |(_, v)| v);
    let newest = measured.max_by_key(|(s, _)| *s).map_or("-", |(_, v)| v);
    format!(
        "{strukt}.{field}: the binary has no DWARF, and the offset tables (grpc-go {oldest} to {newest}) have no \
         row for grpc-go {version}"
    )
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

/// Programs of `tracer-ebpf/src/go/grpc.rs`.
pub const PROGRAMS: &[&str] = &[
    p::GRPC_INVOKE,
    p::GRPC_INVOKE_RET,
    p::GRPC_NEW_STREAM,
    p::GRPC_NEW_STREAM_RET,
    p::GRPC_STREAM_FINISH,
    p::GRPC_EXECUTE_AND_PUT,
    p::GRPC_ORIGINATE_STREAM,
    p::GRPC_HANDLE_STREAM,
    p::GRPC_WRITE_STATUS,
    p::GRPC_HANDLE_STREAM_RET,
];

/// Probes and offsets for a grpc-go binary: `Ok(None)` when it does not link grpc-go, `Err`
/// when it does but something the probes need is missing.
/// A grpc-go process's layout and, per probed function, its probe offsets.
pub type Plan = (GrpcProc, Vec<(&'static str, Vec<u64>)>);

pub fn plan(bin: &GoBinary) -> Result<Option<Plan>, String> {
    if bin.func(CLIENT_INVOKE).is_none() && bin.func(SERVER_HANDLE_STREAM).is_none() {
        return Ok(None);
    }
    // Every field and function the probes need is looked up, and every one missing is named.
    let missing = std::cell::RefCell::new(Vec::<String>::new());
    let off = |s: &str, f: &str| {
        field_offset(bin, s, f).unwrap_or_else(|| {
            missing.borrow_mut().push(missing_field(bin, s, f));
            0
        })
    };
    let t = |n: &str| format!("{TRANSPORT}.{n}");
    let hash =
        |sym: &str| bin.symbol_bytes(sym, 16, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
    let proc = GrpcProc {
        // grpc >= 1.69 hands the handler a *ServerStream embedding *Stream.
        server_stream_stream: field_offset(bin, &t("ServerStream"), "Stream").unwrap_or(GRPC_NONE),
        stream_id: off(&t("Stream"), "id"),
        stream_method: off(&t("Stream"), "method"),
        server_conn: off(&t("http2Server"), "conn"),
        loopy_conn: off(&t("loopyWriter"), "conn"),
        hdr_stream_id: off(&t("headerFrame"), "streamID"),
        netfd_laddr: off("net.netFD", "laddr"),
        netfd_raddr: off("net.netFD", "raddr"),
        tcpaddr_ip: off("net.TCPAddr", "IP"),
        tcpaddr_port: off("net.TCPAddr", "Port"),
        status_err_s: off("google.golang.org/grpc/internal/status.Error", "s"),
        status_s: off("google.golang.org/grpc/internal/status.Status", "s"),
        spb_code: off("google.golang.org/genproto/googleapis/rpc/status.Status", "Code"),
        status_err_hash: hash("go:itab.*google.golang.org/grpc/internal/status.Error,error"),
        errstring_hash: hash("go:itab.*errors.errorString,error"),
    };
    let entry = |name: &str| {
        bin.body_offset(name).map(|o| vec![o]).unwrap_or_else(|| {
            missing.borrow_mut().push(format!("no function {name}"));
            Vec::new()
        })
    };
    let rets = |name: &str| match bin.ret_offsets(name) {
        Some(r) if !r.is_empty() => r,
        _ => {
            missing.borrow_mut().push(format!("no RET instruction found in {name}"));
            Vec::new()
        }
    };
    let write_status = [t("(*http2Server).writeStatus"), t("(*http2Server).WriteStatus")]
        .into_iter()
        .find(|n| bin.func(n).is_some())
        .unwrap_or_else(|| t("(*http2Server).writeStatus"));
    let points = vec![
        (p::GRPC_INVOKE, entry(CLIENT_INVOKE)),
        (p::GRPC_INVOKE_RET, rets(CLIENT_INVOKE)),
        (p::GRPC_NEW_STREAM, entry(CLIENT_NEW_STREAM)),
        (p::GRPC_NEW_STREAM_RET, rets(CLIENT_NEW_STREAM)),
        (p::GRPC_STREAM_FINISH, entry(CLIENT_STREAM_FINISH)),
        (p::GRPC_EXECUTE_AND_PUT, entry(&t("(*controlBuffer).executeAndPut"))),
        (p::GRPC_ORIGINATE_STREAM, entry(&t("(*loopyWriter).originateStream"))),
        (p::GRPC_HANDLE_STREAM, entry(SERVER_HANDLE_STREAM)),
        (p::GRPC_WRITE_STATUS, entry(&write_status)),
        (p::GRPC_HANDLE_STREAM_RET, rets(SERVER_HANDLE_STREAM)),
    ];
    let missing = missing.into_inner();
    if !missing.is_empty() {
        return Err(missing.join("; "));
    }
    Ok(Some((proc, points)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
