//! `http.route` for Go net/http servers (kernel side: `tracer-ebpf/src/httproute.rs`).
//!
//! The kernel reports the pattern a `ServeMux` matched (`GET /items/{id}`) with the span id of
//! the server request being handled on that goroutine, before the handler answers. The
//! assembler keeps it until that exchange completes; the span then carries `http.route` (the
//! pattern's path: `/items/{id}`) and is named `GET /items/{id}`, per OpenTelemetry's HTTP
//! conventions. `url.path` keeps the raw path. Without a pattern the span is unchanged.

use crate::assembler::Exchange;
use crate::events::DecodeError;
use crate::model::SpanId;
use std::collections::{HashMap, VecDeque};
use std::mem::{offset_of, size_of};
use tracer_common::{GoRouteEvent, ROUTE_LEN};

/// Patterns waiting for their exchange, at most (the oldest are dropped beyond).
const MAX_PENDING: usize = 16_384;

/// A matched pattern for a server span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub tgid: u32,
    pub span_id: [u8; 8],
    /// The whole pattern, e.g. `GET example.com/items/{id}`.
    pub pattern: String,
}

/// Decodes a [`GoRouteEvent`] record. A pattern too long to be carried (or unreadable) comes
/// empty, and the span keeps its plain name.
pub fn decode(b: &[u8], tgid: u32) -> Result<Route, DecodeError> {
    let need = size_of::<GoRouteEvent>();
    if b.len() < need {
        return Err(DecodeError::Short { len: b.len(), need });
    }
    let len = u32::from_ne_bytes(b[offset_of!(GoRouteEvent, len)..][..4].try_into().expect("4 bytes"));
    if len as usize > ROUTE_LEN {
        return Err(DecodeError::Inconsistent { field: "len", value: len, len: ROUTE_LEN as u32 });
    }
    let mut span_id = [0u8; 8];
    span_id.copy_from_slice(&b[offset_of!(GoRouteEvent, span_id)..][..8]);
    let p = offset_of!(GoRouteEvent, pattern);
    let pattern = String::from_utf8_lossy(&b[p..p + len as usize]).into_owned();
    Ok(Route { tgid, span_id, pattern })
}

/// `http.route` of a ServeMux pattern `[METHOD ][HOST]/[PATH]`: the path from its first `/`
/// (the method and host dropped); `None` when there is none.
pub fn http_route(pattern: &str) -> Option<&str> {
    let rest = match pattern.split_once([' ', '\t']) {
        Some((_, rest)) => rest.trim_start_matches([' ', '\t']),
        None => pattern,
    };
    rest.find('/').map(|i| &rest[i..])
}

/// Patterns waiting for their exchange to complete.
#[derive(Default)]
pub struct Routes {
    by_span: HashMap<SpanId, String>,
    order: VecDeque<SpanId>,
}

impl Routes {
    pub fn insert(&mut self, r: &Route) {
        let Some(route) = http_route(&r.pattern) else { return };
        let id = SpanId(r.span_id);
        if self.by_span.insert(id, route.to_owned()).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_PENDING {
            if let Some(old) = self.order.pop_front() {
                self.by_span.remove(&old);
            }
        }
    }

    /// Gives completed server exchanges their route.
    pub fn apply(&mut self, exs: &mut [Exchange]) {
        if self.by_span.is_empty() {
            return;
        }
        for ex in exs {
            if ex.kind == crate::model::SpanKind::Server {
                if let Some(r) = self.by_span.remove(&ex.span_id) {
                    ex.route = Some(r);
                }
            }
        }
        if self.by_span.is_empty() {
            self.order.clear();
        } else if self.order.len() > 2 * self.by_span.len() + 64 {
            let live = &self.by_span;
            self.order.retain(|id| live.contains_key(id));
        }
    }

    pub fn len(&self) -> usize {
        self.by_span.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_span.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_is_the_patterns_path() {
        assert_eq!(http_route("GET /items/{id}"), Some("/items/{id}"));
        assert_eq!(http_route("/items/{id...}"), Some("/items/{id...}"));
        assert_eq!(http_route("POST example.com/a/"), Some("/a/"));
        assert_eq!(http_route("example.com/"), Some("/"));
        assert_eq!(http_route("GET  /x"), Some("/x"));
        assert_eq!(http_route("GET"), None);
        assert_eq!(http_route(""), None);
    }

    fn record(pattern: &str) -> Vec<u8> {
        let mut p = [0u8; ROUTE_LEN];
        p[..pattern.len()].copy_from_slice(pattern.as_bytes());
        let ev = GoRouteEvent {
            header: tracer_common::EventHeader { kind: 17, _pad: 0, ts_ns: 1, pid_tgid: 5 << 32 },
            span_id: [7; 8],
            len: pattern.len() as u32,
            truncated: 0,
            pattern: p,
        };
        // SAFETY: a #[repr(C)] plain-data struct viewed as its bytes.
        unsafe { std::slice::from_raw_parts((&ev as *const GoRouteEvent).cast::<u8>(), size_of::<GoRouteEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_and_applies_to_the_server_span() {
        let r = decode(&record("GET /items/{id}"), 5).expect("decodes");
        assert_eq!(r, Route { tgid: 5, span_id: [7; 8], pattern: "GET /items/{id}".into() });
        let mut routes = Routes::default();
        routes.insert(&r);
        // An empty pattern (too long for the kernel to carry) is no route.
        routes.insert(&decode(&record(""), 5).expect("decodes"));
        assert_eq!(routes.len(), 1);
        let mut bad = record("/x");
        bad[offset_of!(GoRouteEvent, len)..][..4].copy_from_slice(&999u32.to_ne_bytes());
        assert!(decode(&bad, 5).is_err());
        assert!(decode(&bad[..30], 5).is_err());
    }

    #[test]
    fn pending_routes_are_bounded() {
        let mut r = Routes::default();
        for i in 0..(MAX_PENDING as u64 + 10) {
            r.insert(&Route { tgid: 1, span_id: i.to_ne_bytes(), pattern: "/x".into() });
        }
        assert_eq!(r.len(), MAX_PENDING);
    }
}
