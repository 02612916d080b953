//! What the span of a failed connect says.

use crate::model::{Attr, SpanStatus};
use crate::protocols::shape::Shape;

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
