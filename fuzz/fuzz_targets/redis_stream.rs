//! The Redis protocol (RESP2/RESP3 readers and command/reply pairing) fed any transfers.
#![no_main]

mod db_common;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tracer_common::Proto;
use tracer_user::model::SpanRecord;
use tracer_user::protocols::redis::Redis;

/// Never an argument: no query text, and the operation is a bounded command name.
fn check(s: &SpanRecord) {
    tracer_fuzz::check_span(s);
    assert!(s.attr("db.query.text").is_none());
    if let Some(tracer_user::model::AttrValue::Str(op)) = s.attr("db.operation.name") {
        assert!(op.len() <= 2 * tracer_user::protocols::redis::resp::MAX_NAME + 1, "{op:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = db_common::drive(&mut Unstructured::new(data), &mut Redis::new(), Proto::Redis, check);
});
