//! `http.route` for Go net/http servers (kernel side: `tracer-ebpf/src/go/http_route.rs`).
//!
//! The kernel reports the pattern a `ServeMux` matched (`GET /items/{id}`) with the span id of
//! the server request being handled on that goroutine, before the handler answers. It is kept
//! here until that exchange completes; the span then carries `http.route` (the
//! pattern's path: `/items/{id}`) and is named `GET /items/{id}`, per OpenTelemetry's HTTP
//! conventions. `url.path` keeps the raw path. Without a pattern the span is unchanged.

use std::collections::{HashMap, VecDeque};

use crate::capture::event::RouteRecord;
use crate::model::{SpanId, SpanKind};
use crate::protocols::exchange::{Detail, Exchange};

/// Patterns waiting for their exchange, at most (the oldest are dropped beyond).
const MAX_PENDING: usize = 16_384;

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
    pub fn insert(&mut self, r: &RouteRecord) {
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
            if let (SpanKind::Server, Detail::Http1(d)) = (ex.kind, &mut ex.detail)
                && let Some(r) = self.by_span.remove(&ex.span_id)
            {
                d.route = Some(r);
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

    #[test]
    fn empty_patterns_are_no_route() {
        let mut routes = Routes::default();
        routes.insert(&RouteRecord { tgid: 5, span_id: [7; 8], pattern: "GET /items/{id}".into() });
        // An empty pattern (too long for the kernel to carry) is no route.
        routes.insert(&RouteRecord { tgid: 5, span_id: [8; 8], pattern: String::new() });
        assert_eq!(routes.len(), 1);
    }

    #[test]
    fn pending_routes_are_bounded() {
        let mut r = Routes::default();
        for i in 0..(MAX_PENDING as u64 + 10) {
            r.insert(&RouteRecord { tgid: 1, span_id: i.to_ne_bytes(), pattern: "/x".into() });
        }
        assert_eq!(r.len(), MAX_PENDING);
    }
}
