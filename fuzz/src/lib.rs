//! Helpers shared by the fuzz targets: checks of what the agent promises about every span and
//! message head, whatever bytes it was fed.

use tracer_user::model::{AttrValue, SpanRecord};
use tracer_user::protocols::http1::framing::{self as http, Head, MessageEvent};

/// A request head never keeps a query string, and its fields stay within their documented caps.
pub fn check_message_event<M>(ev: &MessageEvent<M>) {
    if let MessageEvent::Head { head: Head::Request(r), .. } = ev {
        assert!(r.method.len() <= http::MAX_METHOD_LEN, "method {:?}", r.method);
        if let Some(p) = &r.path {
            assert!(p.len() <= http::MAX_PATH_LEN);
            assert!(!p.contains('?') && !p.contains('#'), "path kept a query or fragment: {p:?}");
        }
        if let Some(h) = &r.host {
            assert!(!h.host.is_empty() && h.host.len() <= http::MAX_HOST_LEN);
        }
    }
}

/// A span never carries a query string in `url.path` and always has a name.
pub fn check_span(s: &SpanRecord) {
    assert!(!s.name.is_empty());
    if let Some(AttrValue::Str(p)) = s.attr("url.path") {
        assert!(!p.contains('?'), "url.path kept a query string: {p:?}");
    }
}
