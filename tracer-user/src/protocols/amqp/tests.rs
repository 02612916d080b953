//! AMQP 0-9-1 through the protocol seam: transfers in, spans out.

use tracer_common::Proto;
use tracer_common::classify::{AMQP_FRAME_END, AMQP_HEADER};

use super::Amqp;
use super::wire::{BODY, HEADER, HEARTBEAT, METHOD};
use crate::model::{SpanKind, SpanRecord, SpanStatus};
use crate::protocols::database::testkit::{Conn, attr};
use crate::streams::EndReason;

const SECRET: &str = "secret-literal-4242";

fn conn() -> Conn<Amqp> {
    let mut c = Conn::new(Amqp::new(), Proto::Amqp);
    c.info.tuple.dport = 5672;
    c
}

fn frame(typ: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![typ];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(AMQP_FRAME_END);
    f
}

fn shortstr(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn method(channel: u16, class: u16, id: u16, args: &[&[u8]]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    for a in args {
        p.extend_from_slice(a);
    }
    frame(METHOD, channel, &p)
}

/// A content header (class basic, weight 0, the body size, then properties with the
/// application's headers) and the body in frames of at most `max` bytes.
fn content(channel: u16, body: &[u8], max: usize) -> Vec<u8> {
    let mut h = 60u16.to_be_bytes().to_vec();
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&(body.len() as u64).to_be_bytes());
    // Property flags: headers present; a header table holding a secret.
    h.extend_from_slice(&[0x20, 0x00]);
    let table = [shortstr("token"), vec![b'S'], (SECRET.len() as u32).to_be_bytes().to_vec(), SECRET.into()].concat();
    h.extend_from_slice(&(table.len() as u32).to_be_bytes());
    h.extend_from_slice(&table);
    let mut out = frame(HEADER, channel, &h);
    for chunk in body.chunks(max) {
        out.extend(frame(BODY, channel, chunk));
    }
    out
}

fn publish(channel: u16, exchange: &str, key: &str, mandatory: bool, body: &[u8]) -> Vec<u8> {
    let mut f = method(channel, 60, 40, &[&[0, 0], &shortstr(exchange), &shortstr(key), &[mandatory as u8]]);
    f.extend(content(channel, body, 131_064));
    f
}

fn deliver(channel: u16, tag: &str, delivery: u64, exchange: &str, key: &str, body: &[u8]) -> Vec<u8> {
    let mut f =
        method(channel, 60, 60, &[&shortstr(tag), &delivery.to_be_bytes(), &[0], &shortstr(exchange), &shortstr(key)]);
    f.extend(content(channel, body, 131_064));
    f
}

fn ack(channel: u16, tag: u64, multiple: bool) -> Vec<u8> {
    method(channel, 60, 80, &[&tag.to_be_bytes(), &[multiple as u8]])
}

fn confirm_select(c: &mut Conn<Amqp>, channel: u16) {
    c.write(&method(channel, 85, 10, &[&[0]]));
    c.read(&method(channel, 85, 11, &[]));
}

/// The client's opening: protocol header, start/start-ok, tune/tune-ok, open, channel 1.
fn open(c: &mut Conn<Amqp>) {
    c.write(&AMQP_HEADER);
    c.read(&method(0, 10, 10, &[&[0, 9], &[0, 0, 0, 0], &[0, 0, 0, 5], b"PLAIN", &[0, 0, 0, 5], b"en_US"]));
    c.write(&method(0, 10, 11, &[&[0, 0, 0, 0], &shortstr("PLAIN"), &[0, 0, 0, 4], b"\0u\0p", &shortstr("en_US")]));
    c.read(&method(0, 10, 30, &[&[0, 0x07, 0xff, 0xff], &[0, 2, 0, 0], &[0, 60]]));
    c.write(&method(0, 10, 31, &[&[0, 0x07, 0xff, 0xff], &[0, 2, 0, 0], &[0, 60]]));
    c.write(&method(0, 10, 40, &[&shortstr("/"), &shortstr(""), &[0]]));
    c.read(&method(0, 10, 41, &[&shortstr("")]));
    c.write(&method(1, 20, 10, &[&shortstr("")]));
    c.read(&method(1, 20, 11, &[&[0, 0, 0, 0]]));
}

fn no_secret(spans: &[SpanRecord]) {
    for s in spans {
        let text = format!("{s:?}");
        assert!(!text.contains(SECRET) && !text.contains("amq.gen-Xy"), "{s:#?}");
    }
}

fn summary(spans: &[SpanRecord]) -> Vec<(String, SpanKind, Option<String>)> {
    spans.iter().map(|s| (s.name.clone(), s.kind, attr(s, "error.type"))).collect()
}

#[test]
fn publish_without_confirms_ends_at_its_hand_over() {
    let mut c = conn();
    open(&mut c);
    c.write(&publish(1, "orders", "order.created", false, SECRET.as_bytes()));
    c.write(&publish(1, "", "jobs", false, b""));
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        vec![("publish orders".into(), SpanKind::Producer, None), ("publish jobs".into(), SpanKind::Producer, None)]
    );
    let s = &spans[0];
    assert_eq!(attr(s, "messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attr(s, "messaging.operation.type").as_deref(), Some("send"));
    assert_eq!(attr(s, "messaging.destination.name").as_deref(), Some("orders"));
    assert_eq!(attr(s, "messaging.rabbitmq.destination.routing_key").as_deref(), Some("order.created"));
    assert_eq!(attr(s, "messaging.message.body.size").as_deref(), Some(SECRET.len().to_string().as_str()));
    assert_eq!(s.parent_span_id.map(|p| p.0), Some([0xaa; 8]), "the writer's server span is the parent");
    assert_eq!(attr(&spans[1], "messaging.message.body.size").as_deref(), Some("0"));
    no_secret(&spans);
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn confirms_end_publishes_at_the_ack_and_fail_on_nack_return_and_close() {
    let mut c = conn();
    open(&mut c);
    confirm_select(&mut c, 1);
    c.write(&publish(1, "", "orders.q", false, b"a"));
    c.write(&publish(1, "", "orders.q", false, b"b"));
    c.write(&publish(1, "", "orders.q", false, b"c"));
    assert_eq!(c.in_flight(), 3);
    assert!(c.spans().is_empty(), "nothing ends before the broker's ack");
    // Acks out of order: 2, then 3 with `multiple` (which takes 1 too).
    c.read(&ack(1, 2, false));
    c.read(&ack(1, 3, true));
    assert_eq!(c.spans().len(), 3);
    // A mandatory publish no queue takes: returned, then acked.
    c.write(&publish(1, "", "nowhere", true, b"d"));
    let mut ret =
        method(1, 60, 50, &[&312u16.to_be_bytes(), &shortstr("NO_ROUTE"), &shortstr(""), &shortstr("nowhere")]);
    ret.extend(content(1, b"d", 4096));
    c.read(&ret);
    c.read(&ack(1, 4, false));
    // A nack.
    c.write(&publish(1, "", "orders.q", false, b"e"));
    c.read(&method(1, 60, 120, &[&5u64.to_be_bytes(), &[0]]));
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        vec![
            ("publish nowhere".into(), SpanKind::Producer, Some("no-route".into())),
            ("publish orders.q".into(), SpanKind::Producer, Some("nack".into())),
        ]
    );
    assert!(matches!(spans[0].status, SpanStatus::Error(_)));
    // A publish to a missing exchange: the broker closes the channel.
    c.write(&publish(1, "missing", "k", false, b"f"));
    c.read(&method(1, 20, 40, &[&404u16.to_be_bytes(), &shortstr("NOT_FOUND - no exchange"), &[0, 60], &[0, 40]]));
    c.write(&method(1, 20, 41, &[]));
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![("publish missing".into(), SpanKind::Producer, Some("not-found".into()))]);
    assert_eq!((c.in_flight(), c.stats.unmatched_responses, c.stats.parse_errors), (0, 0, 0));
}

#[test]
fn deliveries_are_consumer_spans_with_their_subscription() {
    let mut c = conn();
    open(&mut c);
    // One consumer tag chosen by the client, one by the broker.
    c.write(&method(1, 60, 20, &[&[0, 0], &shortstr("orders.q"), &shortstr("ctag-1"), &[0], &[0, 0, 0, 0]]));
    c.read(&method(1, 60, 21, &[&shortstr("ctag-1")]));
    c.write(&method(1, 60, 20, &[&[0, 0], &shortstr("amq.gen-Xy"), &shortstr(""), &[0], &[0, 0, 0, 0]]));
    c.read(&method(1, 60, 21, &[&shortstr("amq.ctag-broker")]));
    c.read(&deliver(1, "ctag-1", 1, "", "orders.q", SECRET.as_bytes()));
    // Header and body in separate reads, the body over frames.
    let mut d = deliver(1, "amq.ctag-broker", 2, "events", "amq.gen-Xy", &[1; 10_000]);
    let rest = d.split_off(60);
    c.read(&d);
    c.read(&rest);
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        vec![
            ("receive orders.q".into(), SpanKind::Consumer, None),
            ("receive events".into(), SpanKind::Consumer, None)
        ]
    );
    assert_eq!(attr(&spans[0], "messaging.destination.subscription.name").as_deref(), Some("orders.q"));
    assert_eq!(attr(&spans[0], "messaging.rabbitmq.message.delivery_tag").as_deref(), Some("1"));
    assert_eq!(attr(&spans[0], "messaging.operation.type").as_deref(), Some("receive"));
    assert!(spans[0].parent_span_id.is_none(), "a delivery starts a trace");
    // A broker-named queue is never exported by name: no subscription, no routing key.
    assert_eq!(attr(&spans[1], "messaging.destination.subscription.name"), None);
    assert_eq!(attr(&spans[1], "messaging.rabbitmq.destination.routing_key"), None);
    assert_eq!(attr(&spans[1], "messaging.message.body.size").as_deref(), Some("10000"));
    no_secret(&spans);
}

#[test]
fn get_is_a_client_span_ended_by_get_ok_or_get_empty() {
    let mut c = conn();
    open(&mut c);
    c.write(&method(1, 60, 70, &[&[0, 0], &shortstr("orders.q"), &[1]]));
    let mut ok = method(1, 60, 71, &[&7u64.to_be_bytes(), &[0], &shortstr(""), &shortstr("orders.q"), &[0, 0, 0, 3]]);
    ok.extend(content(1, b"xyz", 4096));
    c.read(&ok);
    c.write(&method(1, 60, 70, &[&[0, 0], &shortstr("orders.q"), &[1]]));
    c.read(&method(1, 60, 72, &[&shortstr("")]));
    // The channel's last declared queue (`""`): not named.
    c.write(&method(1, 60, 70, &[&[0, 0], &shortstr(""), &[1]]));
    c.read(&method(1, 60, 72, &[&shortstr("")]));
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        vec![
            ("receive orders.q".into(), SpanKind::Client, None),
            ("receive orders.q".into(), SpanKind::Client, None),
            ("receive".into(), SpanKind::Client, None),
        ]
    );
    assert_eq!(attr(&spans[0], "messaging.rabbitmq.message.delivery_tag").as_deref(), Some("7"));
    assert_eq!(attr(&spans[0], "messaging.message.body.size").as_deref(), Some("3"));
    assert_eq!(attr(&spans[1], "messaging.message.body.size"), None, "an empty get carries no message");
    assert!(spans.iter().all(|s| s.parent_span_id.is_some()), "a get is its writer's call");
}

#[test]
fn a_broker_is_recognised_and_yields_nothing() {
    let mut c = conn();
    c.read(&AMQP_HEADER);
    c.write(&method(0, 10, 10, &[&[0, 9], &[0, 0, 0, 0], &[0, 0, 0, 5], b"PLAIN", &[0, 0, 0, 5], b"en_US"]));
    c.read(&publish(1, "orders", "k", false, b"x"));
    c.write(&deliver(1, "t", 1, "orders", "k", b"x"));
    c.read(&publish(1, "orders", "k", false, b"x"));
    assert!(c.spans().is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_large_body_through_the_kernel_s_gap_and_heartbeats_between() {
    let mut c = conn();
    open(&mut c);
    c.write(&frame(HEARTBEAT, 0, &[]));
    // One write: the method, the header and 100 KiB of body in frames of 128 KiB at most; the
    // kernel keeps the first KiB and the last bytes.
    c.write(&publish(1, "big", "k", false, &[9; 100_000]));
    c.read(&frame(HEARTBEAT, 0, &[]));
    c.write(&publish(1, "big", "k", false, b"after"));
    let spans = c.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(attr(&spans[0], "messaging.message.body.size").as_deref(), Some("100000"));
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn lost_framing_recovers_at_the_next_frame_and_ends_what_was_open() {
    let mut c = conn();
    open(&mut c);
    // A transfer of many small frames longer than the kernel copies: the frame headers in the
    // gap are lost.
    let mut many = Vec::new();
    for _ in 0..40 {
        many.extend(publish(1, "e", "k", false, b"0123456789"));
    }
    c.write(&many);
    assert!(c.stats.parse_errors >= 1);
    c.spans();
    // Garbage, then a frame again.
    c.write(b"\x00garbage-not-a-frame");
    c.write(&publish(1, "e", "k", false, b"x"));
    assert_eq!(summary(&c.spans()), vec![("publish e".into(), SpanKind::Producer, None)]);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn unconfirmed_publishes_are_bounded_and_dropped_at_the_end() {
    let mut c = conn();
    c.config.max_in_flight = 4;
    open(&mut c);
    confirm_select(&mut c, 1);
    for _ in 0..6 {
        c.write(&publish(1, "", "q", false, b"x"));
    }
    assert_eq!(c.in_flight(), 4);
    assert_eq!(c.spans().len(), 2, "past the bound the oldest end at their hand-over");
    c.end(EndReason::Closed);
    assert_eq!((c.in_flight(), c.stats.unanswered_requests), (0, 4));
    assert!(c.spans().is_empty());
}

#[test]
fn direct_reply_to_is_temporary_with_its_template() {
    let mut c = conn();
    open(&mut c);
    c.write(&publish(1, "", "amq.rabbitmq.reply-to.g1h2AA5yZXBseQ", false, b"r"));
    let spans = c.spans();
    assert_eq!(spans[0].name, "publish amq.rabbitmq.reply-to");
    assert_eq!(attr(&spans[0], "messaging.destination.temporary").as_deref(), Some("true"));
    assert_eq!(attr(&spans[0], "messaging.destination.name"), None);
    assert_eq!(attr(&spans[0], "messaging.rabbitmq.destination.routing_key"), None);
}
