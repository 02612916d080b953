//! AMQP 0-9-1 (frame reader over gaps, publishes with confirms, returns and closes, deliveries,
//! fetches, a broker's connection) fed any transfers.
#![no_main]

mod db_common;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tracer_common::Proto;
use tracer_user::model::{AttrValue, SpanKind, SpanRecord, SpanStatus};
use tracer_user::protocols::amqp::Amqp;

/// A publish is a PRODUCER span, a delivery a CONSUMER one and a fetch a CLIENT one, named after
/// their operation; a destination is never empty nor broker-named; an error is named.
fn check(s: &SpanRecord) {
    tracer_fuzz::check_span(s);
    let str_attr = |k: &str| match s.attr(k) {
        Some(AttrValue::Str(v)) => Some(v.clone()),
        _ => None,
    };
    assert_eq!(str_attr("messaging.system").as_deref(), Some("rabbitmq"));
    let op = match s.kind {
        SpanKind::Producer => "publish",
        SpanKind::Consumer | SpanKind::Client => "receive",
        other => panic!("{other:?}"),
    };
    assert_eq!(str_attr("messaging.operation.name").as_deref(), Some(op));
    assert!(s.name == op || s.name.starts_with(&format!("{op} ")), "{s:?}");
    if let Some(d) = str_attr("messaging.destination.name") {
        assert!(!d.is_empty() && !d.starts_with("amq.gen-"), "{d:?}");
        assert_eq!(s.name, format!("{op} {d}"));
    }
    if let Some(k) = str_attr("messaging.rabbitmq.destination.routing_key") {
        assert!(!k.is_empty() && !k.starts_with("amq.gen-"), "{k:?}");
    }
    match (&s.status, str_attr("error.type")) {
        (SpanStatus::Error(e), Some(t)) => assert!(!t.is_empty() && *e == t, "{s:?}"),
        (SpanStatus::Unset, None) => {}
        other => panic!("status and error.type disagree: {other:?}"),
    }
    if let Some(v) = s.attr("messaging.message.body.size") {
        assert!(matches!(v, AttrValue::Int(n) if *n >= 0), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = db_common::drive(&mut Unstructured::new(data), &mut Amqp::new(), Proto::Amqp, check);
});
