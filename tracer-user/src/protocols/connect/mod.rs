//! A connect(2) that failed: no connection, no protocol, but a CLIENT span all the same (named
//! `connect`, failed, with its `connect` event), so a call that never reached its server is
//! not lost.

use tracer_common::Role;

pub mod detail;

use self::detail::ConnectDetail;
use super::exchange::{Detail, Exchange, Ids, Pairing, Stamp};
use crate::model::SpanKind;
use crate::streams::{ConnInfo, ConnUse, FailedConnect};

/// The span of a failed connect: from connect(2)'s entry to the failure, on the connecting
/// thread (so the server span that thread was handling, if any, is its parent).
pub fn exchange(f: &FailedConnect) -> Exchange {
    let c = f.connect;
    let info = ConnInfo {
        tgid: f.tgid,
        fd: -1,
        sock: 0,
        tuple: f.tuple,
        hint: Role::Client,
        proto: tracer_common::Proto::Unknown,
        tls: false,
        last_activity_ns: c.end_ns,
        connect: Some(c),
        tls_handshake: None,
        data_start_ns: 0,
        prev_activity_ns: None,
        claimed: false,
    };
    let first = Stamp { start_ns: c.start_ns, end_ns: c.start_ns, tid: f.tid };
    let last = Stamp { start_ns: c.end_ns, end_ns: c.end_ns, tid: f.tid };
    let errno = match c.outcome {
        crate::streams::ConnectOutcome::Failed(e) => e,
        _ => None,
    };
    let ids = Ids::new(SpanKind::Client, None, None);
    let mut ex = Exchange::on_conn(
        &info,
        SpanKind::Client,
        first,
        ids,
        None,
        Pairing::ByTuple,
        Detail::Connect(ConnectDetail { errno }),
    );
    ex.request_last = Some(first);
    ex.response_last = Some(last);
    ex.conn_use = Some(ConnUse { reused: false, idle_ns: None, connect: Some(c), lookup: None, tls: None });
    ex
}

#[cfg(test)]
mod tests {
    use super::detail::error_type;

    #[test]
    fn errno_names() {
        assert_eq!(error_type(Some(111)), "ECONNREFUSED");
        assert_eq!(error_type(None), "connect_failed");
        assert_eq!(error_type(Some(4242)), "errno 4242");
    }
}
