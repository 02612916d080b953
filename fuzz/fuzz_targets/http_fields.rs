//! The small HTTP field parsers: request/response sniffing, Host headers and request targets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::protocols::http1::framing::{
    self as http, looks_like_request, looks_like_response, parse_host, path_of,
};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_request(data);
    let _ = looks_like_response(data);
    if let Some(h) = parse_host(data) {
        assert!(!h.host.is_empty() && h.host.len() <= http::MAX_HOST_LEN);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(p) = path_of(s) {
            assert!(p.len() <= http::MAX_PATH_LEN);
            assert!(!p.contains('?') && !p.contains('#'), "{p:?}");
        }
    }
});
