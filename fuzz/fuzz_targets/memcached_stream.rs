//! The Memcached text protocol (line and block readers, command/reply pairing) fed any
//! transfers.
#![no_main]

mod db_common;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tracer_common::Proto;
use tracer_user::model::{AttrValue, SpanRecord};
use tracer_user::protocols::memcached::Memcached;

/// Never a key or a value: no query text, and the operation is one of the command names.
fn check(s: &SpanRecord) {
    tracer_fuzz::check_span(s);
    assert!(s.attr("db.query.text").is_none());
    if let Some(AttrValue::Str(op)) = s.attr("db.operation.name") {
        assert!(op.len() <= 9 && op.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'), "{op:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = db_common::drive(&mut Unstructured::new(data), &mut Memcached::new(), Proto::Memcached, check);
});
