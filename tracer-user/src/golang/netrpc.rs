//! Go net/rpc probes (kernel side: `tracer-ebpf/src/go/netrpc.rs`): where they attach and the
//! offsets they read (a connection's addresses).

use tracer_common::{NetRpcProc, names::programs as p};

use super::gobin::GoBinary;

pub const CLIENT_SEND: &str = "net/rpc.(*Client).send";
pub const CLIENT_WRITE: &str = "net/rpc.(*gobClientCodec).WriteRequest";
pub const CALL_DONE: &str = "net/rpc.(*Call).done";
pub const SERVER_CALL: &str = "net/rpc.(*service).call";
pub const SERVER_RESPOND: &str = "net/rpc.(*Server).sendResponse";

/// Every function the net/rpc probes attach to.
pub const FUNCTIONS: &[&str] = &[CLIENT_SEND, CLIENT_WRITE, CALL_DONE, SERVER_CALL, SERVER_RESPOND];

/// Kernel programs of this module.
pub const PROGRAMS: &[&str] = &[
    p::GO_RPC_CLIENT_SEND,
    p::GO_RPC_CLIENT_WRITE,
    p::GO_RPC_CLIENT_DONE,
    p::GO_RPC_SERVER_CALL,
    p::GO_RPC_SERVER_RESPOND,
];

/// net/rpc probes for a binary: `Ok(None)` when it does not use net/rpc, an error when it does
/// but something the probes need is missing.
#[allow(clippy::type_complexity)]
pub fn plan(bin: &GoBinary) -> Result<Option<(NetRpcProc, Vec<(&'static str, Vec<u64>)>)>, String> {
    let client = bin.func(CLIENT_SEND).is_some();
    let server = bin.func(SERVER_CALL).is_some();
    if !client && !server {
        return Ok(None);
    }
    let off = |s: &str, f: &str| -> Result<u32, String> {
        bin.field_offset(s, f)
            .and_then(|(o, _)| u32::try_from(o).ok())
            .ok_or_else(|| format!("no offset of {s}.{f} for {}", bin.build.go_version))
    };
    let proc = NetRpcProc {
        netfd_laddr: off("net.netFD", "laddr")?,
        netfd_raddr: off("net.netFD", "raddr")?,
        tcpaddr_ip: off("net.TCPAddr", "IP")?,
        tcpaddr_port: off("net.TCPAddr", "Port")?,
    };
    let mut points = Vec::new();
    let entry = |name: &str| bin.body_offset(name).map(|o| vec![o]).ok_or_else(|| format!("no {name}"));
    if client {
        points.push((p::GO_RPC_CLIENT_SEND, entry(CLIENT_SEND)?));
        points.push((p::GO_RPC_CLIENT_DONE, entry(CALL_DONE)?));
        // Only the gob codec's requests are read; other codecs' calls are not traced.
        if let Ok(w) = entry(CLIENT_WRITE) {
            points.push((p::GO_RPC_CLIENT_WRITE, w));
        }
    }
    if server {
        points.push((p::GO_RPC_SERVER_CALL, entry(SERVER_CALL)?));
        points.push((p::GO_RPC_SERVER_RESPOND, entry(SERVER_RESPOND)?));
    }
    Ok(Some((proc, points)))
}
