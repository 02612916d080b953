//! Linking a Go program's outgoing calls through their `context.Context` (kernel side:
//! `tracer-ebpf/src/go/context.rs`): what the kernel needs from the binary.
//!
//! * the standard library's context wrappers (`GO_CTX_WRAPPERS`), by their `Deadline` methods:
//!   the first method of their itabs, found in the symbol table or pclntab (so stripped builds
//!   too), as file offsets here and as addresses in each process once it runs
//!   ([`in_process`]);
//! * where a request's context is: `net/http.Request.ctx` (DWARF, else the table of
//!   `gobin::offsets`) and grpc-go's `transport.Stream.ctx` (DWARF only);
//! * where a net/http request's context is recorded as its server span's: at the goroutine
//!   net/http starts for each HTTP/1 request (`(*connReader).startBackgroundRead`'s closure,
//!   seen by the `runtime.newproc1` probe goroutine ancestry has anyway; DWARF gives the way
//!   from the closure to the request), else at the entry of `net/http.serverHandler.ServeHTTP`,
//!   a uprobe of its own. Only in programs that make HTTP or gRPC calls: a program that makes
//!   none has nothing to link, and a uprobe costs a trap per request.

use tracer_common::{GO_CTX_NONE, GO_CTX_WRAPPERS, GoCtxProc, GoServeLayout, names::programs as p};

use super::{gobin::GoBinary, grpc};

pub const SERVE: &str = "net/http.serverHandler.ServeHTTP";
/// The closure `(*connReader).startBackgroundRead` starts its goroutine with: `gowrapN` since
/// Go 1.22, the method value before.
const BACKGROUND_READ: [&str; 2] =
    ["net/http.(*connReader).startBackgroundRead.gowrap", "net/http.(*connReader).backgroundRead-fm"];
const REQUEST: &str = "net/http.Request";
const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";

/// Environment variable that turns context linking off (`off`), leaving goroutine ancestry
/// alone: for comparing what it costs (`cargo xtask bench`), and a way out should it misbehave.
pub const ENV: &str = "TRACER_GO_CONTEXT";

/// Kernel programs of this module.
pub const PROGRAMS: &[&str] = &[p::GO_HTTP_SERVE];

/// The layout and probe points for context linking: `Ok(None)` when the program makes no call
/// or serves no request a call could be linked to, `Err` (why) when it does both but its
/// contexts cannot be read.
pub type Plan = (GoCtxProc, Vec<(&'static str, Vec<u64>)>);

/// `http_client`: whether the program links net/http's client transport.
pub fn plan(bin: &GoBinary, http_client: bool) -> Result<Option<Plan>, String> {
    let grpc_client = bin.func(grpc::CLIENT_INVOKE).is_some();
    let http_server = bin.func(SERVE).is_some();
    let grpc_server = bin.func(grpc::SERVER_HANDLE_STREAM).is_some();
    if !(http_client || grpc_client) || !(http_server || grpc_server) || std::env::var(ENV).as_deref() == Ok("off") {
        return Ok(None);
    }
    let mut wrappers = [0u64; 5];
    for (w, name) in wrappers.iter_mut().zip(GO_CTX_WRAPPERS) {
        *w = bin.func(name).map_or(0, |f| f.file_offset);
    }
    let request_ctx = if http_server || http_client {
        bin.field_offset(REQUEST, "ctx").and_then(|(o, _)| u32::try_from(o).ok())
    } else {
        None
    };
    let stream_ctx = if grpc_server {
        bin.dwarf_field_offset(STREAM, "ctx").ok().flatten().and_then(|o| u32::try_from(o).ok())
    } else {
        None
    };
    let mut points = Vec::new();
    let background = if http_server && request_ctx.is_some() { background_read(bin) } else { None };
    if http_server && request_ctx.is_some() && background.is_none() {
        let serve = bin.body_offset(SERVE).ok_or_else(|| format!("no code for {SERVE}"))?;
        points.push((p::GO_HTTP_SERVE, vec![serve]));
    }
    if points.is_empty() && background.is_none() && stream_ctx.is_none() {
        let v = &bin.build.go_version;
        let what = if bin.has_dwarf() { "no field" } else { "no DWARF (built with -ldflags=-w) and no table row for" };
        return Err(format!("{what} {REQUEST}.ctx / {STREAM}.ctx ({v})"));
    }
    let proc = GoCtxProc {
        request_ctx: request_ctx.unwrap_or(GO_CTX_NONE),
        stream_ctx: stream_ctx.unwrap_or(GO_CTX_NONE),
        wrappers,
        background_read: background.map_or(0, |b| b.closure),
        tcp_itab: background.map_or(0, |b| b.tcp_itab),
        tls_itab: background.map_or(0, |b| b.tls_itab),
        serve: background.map(|b| b.layout).unwrap_or_default(),
        // Set with the process's `GoProc`.
        goid_off: 0,
    };
    Ok(Some((proc, points)))
}

/// What recording a request's context at net/http's per-request goroutine needs, as file
/// offsets and struct offsets: see `GoCtxProc`.
#[derive(Clone, Copy)]
struct Background {
    closure: u64,
    tcp_itab: u64,
    tls_itab: u64,
    layout: GoServeLayout,
}

/// `(*connReader).startBackgroundRead`'s closure and the way from it to the request, when the
/// binary has both (DWARF: these are net/http's private fields, in no table). The request is
/// reached through `conn.curReq`, an `atomic.Pointer[response]` (Go 1.20 on). The socket (for
/// requests with a body, see the kernel side) needs the itabs from the symbol table; without
/// them only requests without a body are recorded.
fn background_read(bin: &GoBinary) -> Option<Background> {
    let f = BACKGROUND_READ.iter().find_map(|n| bin.func_starting(n))?;
    let off = |s: &str, f: &str| bin.dwarf_field_offset(s, f).ok().flatten().and_then(|o| u32::try_from(o).ok());
    let sysfd = off("net.netFD", "pfd").zip(off("internal/poll.FD", "Sysfd")).map(|(a, b)| a + b);
    // `go:itab.` since Go 1.20, `go.itab.` before.
    let itab = |t: &str| {
        ["go:itab.", "go.itab."].iter().find_map(|p| bin.symbol_file_offset(&format!("{p}{t},net.Conn"))).unwrap_or(0)
    };
    let (tcp_itab, tls_itab) = match (off("net/http.conn", "rwc"), sysfd) {
        (Some(_), Some(_)) => (itab("*net.TCPConn"), itab("*crypto/tls.Conn")),
        _ => (0, 0),
    };
    let layout = GoServeLayout {
        reader_conn: off("net/http.connReader", "conn")?,
        conn_cur_req: off("net/http.conn", "curReq")? + off("sync/atomic.Pointer[net/http.response]", "v")?,
        response_req: off("net/http.response", "req")?,
        request_length: off(REQUEST, "ContentLength")?,
        conn_rwc: off("net/http.conn", "rwc").unwrap_or(GO_CTX_NONE),
        tls_conn: off("crypto/tls.Conn", "conn").unwrap_or(GO_CTX_NONE),
        netfd_sysfd: sysfd.unwrap_or(GO_CTX_NONE),
        _pad: 0,
    };
    Some(Background { closure: f.file_offset, tcp_itab, tls_itab, layout })
}

/// The process's copy of `proc`: the wrappers' file offsets turned into the addresses they are
/// mapped at in process `pid` (from `/proc/PID/maps`: PIE builds load anywhere). An error
/// names what could not be read or found (the process gone, a mapping missing).
pub fn in_process(pid: u32, proc: &GoCtxProc) -> Result<GoCtxProc, String> {
    use std::os::unix::fs::MetadataExt as _;
    let exe = format!("/proc/{pid}/exe");
    let ino = std::fs::metadata(&exe).map_err(|e| format!("{exe}: {e}"))?.ino();
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(|e| format!("{maps_path}: {e}"))?;
    let mut out = *proc;
    let addrs = [&mut out.background_read, &mut out.tcp_itab, &mut out.tls_itab];
    for w in out.wrappers.iter_mut().chain(addrs).filter(|w| **w != 0) {
        *w = mapped_at(&maps, ino, *w)
            .ok_or_else(|| format!("file offset {:#x} of the executable is not mapped in {maps_path}", *w))?;
    }
    Ok(out)
}

/// Where file offset `off` of the file with inode `ino` is mapped, from a `/proc/PID/maps` text.
fn mapped_at(maps: &str, ino: u64, off: u64) -> Option<u64> {
    maps.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [range, _perms, offset, _dev, inode, ..] = f[..] else { return None };
        if inode.parse::<u64>().ok()? != ino {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        let offset = u64::from_str_radix(offset, 16).ok()?;
        (off >= offset && off - offset < end - start).then(|| start + (off - offset))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_offsets_map_to_addresses_through_the_executables_mappings() {
        let maps = "\
55d0c0000000-55d0c0200000 r-xp 00000000 fd:01 4242 /srv/app
55d0c0200000-55d0c0300000 r--p 00200000 fd:01 4242 /srv/app
7f0000000000-7f0000100000 r-xp 00000000 fd:01 99 /usr/lib/libc.so.6
";
        assert_eq!(mapped_at(maps, 4242, 0x1234), Some(0x55d0c0001234));
        assert_eq!(mapped_at(maps, 4242, 0x201000), Some(0x55d0c0201000));
        assert_eq!(mapped_at(maps, 4242, 0x300000), None, "past every mapping of the file");
        assert_eq!(mapped_at(maps, 7, 0x10), None, "another file");
    }
}
