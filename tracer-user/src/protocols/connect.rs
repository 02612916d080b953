//! A connect(2) that failed: no connection, no protocol, but a CLIENT span all the same (named
//! `connect`, failed, with its `connect` event), so a call that never reached its server is
//! not lost.

use tracer_common::Role;

use super::exchange::{Detail, Exchange, Ids, Pairing, Stamp};
use crate::model::{Attr, SpanKind, SpanStatus};
use crate::protocols::shape::Shape;
use crate::streams::{ConnInfo, ConnUse, FailedConnect};

/// What a failed connect's span says: the errno, when connect(2) returned one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectDetail {
    pub errno: Option<i32>,
}

impl ConnectDetail {
    pub fn shape(&self) -> Shape {
        let error = error_type(self.errno);
        Shape {
            name: "connect".into(),
            attrs: vec![Attr::str("error.type", error.clone())],
            status: SpanStatus::Error(match self.errno {
                Some(_) => format!("connect failed: {error}"),
                None => "connect failed (refused, reset or timed out)".into(),
            }),
        }
    }
}

/// `error.type` of a failed connect: the errno's name, else `connect_failed` (the handshake
/// ended in `CLOSE` after a non-blocking connect returned: refused, reset or timed out).
pub fn error_type(errno: Option<i32>) -> String {
    let name = match errno {
        None => return "connect_failed".into(),
        Some(111) => "ECONNREFUSED",
        Some(110) => "ETIMEDOUT",
        Some(113) => "EHOSTUNREACH",
        Some(101) => "ENETUNREACH",
        Some(104) => "ECONNRESET",
        Some(99) => "EADDRNOTAVAIL",
        Some(13) => "EACCES",
        Some(1) => "EPERM",
        Some(n) => return format!("errno {n}"),
    };
    name.into()
}

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
    ex.conn_use = Some(ConnUse { reused: false, idle_ns: None, connect: Some(c) });
    ex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(error_type(Some(111)), "ECONNREFUSED");
        assert_eq!(error_type(None), "connect_failed");
        assert_eq!(error_type(Some(4242)), "errno 4242");
    }
}
