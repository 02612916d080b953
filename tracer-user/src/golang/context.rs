//! Linking a Go program's outgoing calls through their `context.Context` (kernel side:
//! `tracer-ebpf/src/go/context.rs`): what the kernel needs from the binary.
//!
//! * the type hashes of the standard library's context wrappers (`GO_CTX_WRAPPERS`), read from
//!   their `go:itab.<type>,context.Context` symbols (the ELF symbol table: a binary built with
//!   `-ldflags=-s` has none, and is linked by goroutine ancestry only);
//! * where a request's context is: `net/http.Request.ctx` and grpc-go's `transport.Stream.ctx`
//!   (DWARF);
//! * the entry of `net/http.serverHandler.ServeHTTP`, where a request's context is recorded as
//!   its server span's. Probed only in programs that make HTTP or gRPC calls: a program that
//!   makes none has nothing to link, and a uprobe costs a trap per request.

use tracer_common::{GO_CTX_NONE, GO_CTX_WRAPPERS, GoCtxProc, names::programs as p};

use super::{gobin::GoBinary, grpc, probes};

pub const SERVE: &str = "net/http.serverHandler.ServeHTTP";
const REQUEST: &str = "net/http.Request";
const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";

/// Kernel programs of this module.
pub const PROGRAMS: &[&str] = &[p::GO_HTTP_SERVE];

/// The layout and probe points for context linking: `Ok(None)` when the program makes no call
/// or serves no request a call could be linked to, `Err` (why) when it does both but its
/// contexts cannot be read.
pub type Plan = (GoCtxProc, Vec<(&'static str, Vec<u64>)>);

pub fn plan(bin: &GoBinary) -> Result<Option<Plan>, String> {
    let http_client = bin.func(probes::WRITE_LOOP).is_some();
    let grpc_client = bin.func(grpc::CLIENT_INVOKE).is_some();
    let http_server = bin.func(SERVE).is_some();
    let grpc_server = bin.func(grpc::SERVER_HANDLE_STREAM).is_some();
    if !(http_client || grpc_client) || !(http_server || grpc_server) {
        return Ok(None);
    }
    if bin.symbols != super::gobin::SymbolSource::Symtab {
        return Err("no symbol table (built with -ldflags=-s): its context types cannot be told apart".into());
    }
    let mut wrappers = [0u32; 6];
    for (w, name) in wrappers.iter_mut().zip(GO_CTX_WRAPPERS) {
        let sym = format!("go:itab.{name},context.Context");
        *w = bin.symbol_bytes(&sym, 16, 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    }
    let dwarf = |s: &str, f: &str| bin.dwarf_field_offset(s, f).ok().flatten().and_then(|o| u32::try_from(o).ok());
    let request_ctx = if http_server || http_client { dwarf(REQUEST, "ctx") } else { None };
    let stream_ctx = if grpc_server { dwarf(STREAM, "ctx") } else { None };
    let mut points = Vec::new();
    if http_server && request_ctx.is_some() {
        let serve = bin.body_offset(SERVE).ok_or_else(|| format!("no code for {SERVE}"))?;
        points.push((p::GO_HTTP_SERVE, vec![serve]));
    }
    if points.is_empty() && stream_ctx.is_none() {
        let what = if bin.has_dwarf() { "no field" } else { "no DWARF (built with -ldflags=-w) for" };
        return Err(format!("{what} {REQUEST}.ctx / {STREAM}.ctx"));
    }
    let proc = GoCtxProc {
        request_ctx: request_ctx.unwrap_or(GO_CTX_NONE),
        stream_ctx: stream_ctx.unwrap_or(GO_CTX_NONE),
        wrappers,
    };
    Ok(Some((proc, points)))
}
