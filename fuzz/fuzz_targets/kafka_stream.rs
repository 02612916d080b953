//! The Kafka protocol (size-prefixed framing with gaps, request and response headers, Produce,
//! Fetch and Metadata decoding, record batch headers, pairing by correlation id, resync after
//! gaps) fed any transfers.
#![no_main]

mod db_common;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tracer_common::Proto;
use tracer_user::model::{AttrValue, SpanKind, SpanRecord, SpanStatus};
use tracer_user::protocols::kafka::Kafka;

/// A send is a PRODUCER span, a receive a CONSUMER one, named after its operation and topic;
/// every span has a partition and a record count (a receive at least one record and an
/// offset); an error is a named error status; nothing else of a record is exported.
fn check(s: &SpanRecord) {
    tracer_fuzz::check_span(s);
    let attr = |k: &str| s.attr(k).cloned();
    let str_attr = |k: &str| match s.attr(k) {
        Some(AttrValue::Str(v)) => Some(v.clone()),
        _ => None,
    };
    let int_attr = |k: &str| match s.attr(k) {
        Some(AttrValue::Int(v)) => Some(*v),
        _ => None,
    };
    assert_eq!(str_attr("messaging.system").as_deref(), Some("kafka"));
    let op = match s.kind {
        SpanKind::Producer => "send",
        SpanKind::Consumer => "receive",
        other => panic!("{other:?}"),
    };
    assert_eq!(str_attr("messaging.operation.name").as_deref(), Some(op));
    let topic = str_attr("messaging.destination.name").expect("a topic");
    assert_eq!(s.name, format!("{op} {topic}"));
    assert!(str_attr("messaging.destination.partition.id").is_some_and(|p| p.parse::<i32>().is_ok()), "{s:?}");
    let count = int_attr("messaging.batch.message_count").expect("a count");
    assert!(count >= 0, "{s:?}");
    if s.kind == SpanKind::Consumer {
        assert!(count > 0 && int_attr("messaging.kafka.offset").is_some_and(|o| o >= 0), "{s:?}");
    }
    assert!(int_attr("messaging.kafka.offset").is_none_or(|o| o >= 0), "{s:?}");
    match (&s.status, str_attr("error.type")) {
        (SpanStatus::Unset, None) => {}
        (SpanStatus::Error(m), Some(e)) => assert_eq!(m, &e),
        other => panic!("{other:?}"),
    }
    assert_eq!(attr("messaging.message.body.size"), None);
}

fuzz_target!(|data: &[u8]| {
    let _ = db_common::drive(&mut Unstructured::new(data), &mut Kafka::new(), Proto::Kafka, check);
});
