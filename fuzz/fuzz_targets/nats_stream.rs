//! The NATS client protocol (line and payload reader, publishes and deliveries, resync after
//! gaps) fed any transfers.
#![no_main]

mod db_common;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tracer_common::Proto;
use tracer_user::model::{AttrValue, SpanKind, SpanRecord};
use tracer_user::protocols::nats::{INBOX_PREFIX, Nats};

/// A publish is a PRODUCER span, a delivery a CONSUMER one, named after its operation; a
/// destination is one subject (no blank), never a reply inbox; a body size is never negative.
fn check(s: &SpanRecord) {
    tracer_fuzz::check_span(s);
    let str_attr = |k: &str| match s.attr(k) {
        Some(AttrValue::Str(v)) => Some(v.clone()),
        _ => None,
    };
    assert_eq!(str_attr("messaging.system").as_deref(), Some("nats"));
    let op = match s.kind {
        SpanKind::Producer => "publish",
        SpanKind::Consumer => "receive",
        other => panic!("{other:?}"),
    };
    assert_eq!(str_attr("messaging.operation.name").as_deref(), Some(op));
    assert!(s.name == op || s.name.starts_with(&format!("{op} ")), "{s:?}");
    if let Some(d) = str_attr("messaging.destination.name") {
        assert!(!d.is_empty() && !d.bytes().any(|c| c <= b' ') && !d.starts_with(INBOX_PREFIX), "{d:?}");
        assert_eq!(s.name, format!("{op} {d}"));
    }
    assert!(matches!(s.attr("messaging.message.body.size"), Some(AttrValue::Int(n)) if *n >= 0), "{s:?}");
}

fuzz_target!(|data: &[u8]| {
    let _ = db_common::drive(&mut Unstructured::new(data), &mut Nats::new(), Proto::Nats, check);
});
