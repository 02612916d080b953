//! W3C `traceparent` values: a parsed one formats back to a value that parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::protocols::http1::framing::parse_traceparent;

fuzz_target!(|data: &[u8]| {
    if let Some(tp) = parse_traceparent(data) {
        assert_ne!(tp.trace_id.0, [0; 16]);
        assert_ne!(tp.parent_id.0, [0; 8]);
        let text = format!("00-{}-{}-{:02x}", tp.trace_id, tp.parent_id, tp.flags);
        assert_eq!(parse_traceparent(text.as_bytes()), Some(tp), "{text}");
    }
});
