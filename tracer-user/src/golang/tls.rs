//! Go crypto/tls probes (kernel side: `tracer-ebpf/src/go/tls.rs`): TLS plaintext into the
//! socket data path, so HTTPS, HTTP/2 over TLS and gRPC over TLS from Go programs are parsed,
//! linked and propagated as their plaintext forms are.
//!
//! `crypto/tls.(*Conn).Write` is probed at entry (a Write sends all its bytes or fails), and
//! `crypto/tls.(*Conn).Read` at entry and at each RET instruction (found by disassembly, never a
//! uretprobe), and so is `(*Conn).clientHandshake`, for the `tls.handshake` phase. The socket comes from `Conn.conn` → `*net.TCPConn` → `*net.netFD` →
//! `pfd.Sysfd`, offsets from DWARF or the version-keyed table.

use tracer_common::{GoTlsProc, names::programs as p};

use super::gobin::GoBinary;

pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const READ: &str = "crypto/tls.(*Conn).Read";
/// Runs a client connection's handshake, once (`Handshake`, which every Read and Write calls,
/// returns at once after that): its end is the `tls.handshake` phase.
pub const CLIENT_HANDSHAKE: &str = "crypto/tls.(*Conn).clientHandshake";

/// Kernel programs of this module (the emitter is tail-called, never attached).
pub const PROGRAMS: &[&str] = &[
    p::GO_TLS_WRITE,
    p::GO_TLS_READ,
    p::GO_TLS_READ_RET,
    p::GO_TLS_EMIT_STEP,
    p::GO_TLS_HANDSHAKE,
    p::GO_TLS_HANDSHAKE_RET,
];

/// The crypto/tls probes of a binary: `Ok(None)` when it does not link crypto/tls's Conn, an
/// error naming what is missing when it does but cannot be probed.
#[allow(clippy::type_complexity)]
pub fn plan(bin: &GoBinary) -> Result<Option<(GoTlsProc, Vec<(&'static str, Vec<u64>)>)>, String> {
    if bin.func(WRITE).is_none() && bin.func(READ).is_none() {
        return Ok(None);
    }
    let off = |s: &str, f: &str| -> Result<u32, String> {
        bin.field_offset(s, f)
            .and_then(|(o, _)| u32::try_from(o).ok())
            .ok_or_else(|| format!("no offset of {s}.{f} (no DWARF, not in the table)"))
    };
    let offsets = GoTlsProc {
        conn: off("crypto/tls.Conn", "conn")?,
        netfd_sysfd: off("net.netFD", "pfd")? + off("internal/poll.FD", "Sysfd")?,
    };
    let write = bin.body_offset(WRITE).ok_or_else(|| format!("no {WRITE}"))?;
    let read = bin.body_offset(READ).ok_or_else(|| format!("no {READ}"))?;
    let rets = bin.ret_offsets(READ).unwrap_or_default();
    if rets.is_empty() {
        return Err(format!("no RET instruction found in {READ}"));
    }
    let mut points = vec![(p::GO_TLS_WRITE, vec![write]), (p::GO_TLS_READ, vec![read]), (p::GO_TLS_READ_RET, rets)];
    // The handshake phase where the binary has a client handshake to probe (a server-only
    // program may not link it); its plaintext is read either way.
    if let (Some(entry), Some(rets)) =
        (bin.body_offset(CLIENT_HANDSHAKE), bin.ret_offsets(CLIENT_HANDSHAKE).filter(|r| !r.is_empty()))
    {
        points.push((p::GO_TLS_HANDSHAKE, vec![entry]));
        points.push((p::GO_TLS_HANDSHAKE_RET, rets));
    }
    Ok(Some((offsets, points)))
}
