//! Kafka through the protocol seam: requests and responses built after the protocol's message
//! definitions, transfers in, spans out.

use tracer_common::Proto;

use super::Kafka;
use super::wire::{
    self, BATCH_HEADER, Cursor, FETCH, METADATA, PRODUCE, Reader, TopicRef, WireEvent, flexible, record_batches,
};
use crate::model::{SpanKind, SpanRecord, SpanStatus};
use crate::protocols::database::testkit::{Conn, attr};
use crate::streams::EndReason;

const SECRET: &str = "secret-payload-4242";
const TOPIC_ID: [u8; 16] = [0x5a; 16];

/// Encodes the protocol's primitive types, compact or not.
#[derive(Default)]
pub struct Enc {
    pub b: Vec<u8>,
    pub flex: bool,
}

impl Enc {
    fn new(flex: bool) -> Self {
        Self { b: Vec::new(), flex }
    }
    fn i8(&mut self, v: i8) -> &mut Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i16(&mut self, v: i16) -> &mut Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn uvarint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.b.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.b.push(v as u8);
        self
    }
    /// An array's (or compact field's) length.
    fn len(&mut self, n: usize) -> &mut Self {
        if self.flex { self.uvarint(n as u64 + 1) } else { self.i32(n as i32) }
    }
    fn str(&mut self, s: &str) -> &mut Self {
        if self.flex {
            self.uvarint(s.len() as u64 + 1);
        } else {
            self.i16(s.len() as i16);
        }
        self.b.extend_from_slice(s.as_bytes());
        self
    }
    fn null_str(&mut self) -> &mut Self {
        if self.flex { self.uvarint(0) } else { self.i16(-1) }
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.len(b.len());
        self.b.extend_from_slice(b);
        self
    }
    fn tags(&mut self) -> &mut Self {
        if self.flex {
            self.uvarint(0);
        }
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.b.extend_from_slice(b);
        self
    }
}

/// A record batch (magic 2) at `base` with `count` records whose values hold the secret.
pub fn batch(base: i64, count: i32) -> Vec<u8> {
    let mut records = Vec::new();
    for _ in 0..count {
        records.extend_from_slice(format!("<record value={SECRET}>").as_bytes());
    }
    let mut e = Enc::new(false);
    e.i64(base).i32((BATCH_HEADER - 12 + records.len()) as i32).i32(0).i8(2).i32(0x1234).i16(0);
    e.i32(count - 1).i64(1_700_000_000_000).i64(1_700_000_000_000).i64(-1).i16(-1).i32(-1).i32(count);
    e.raw(&records);
    e.b
}

/// A whole request: size, header (client id `svc`) and body.
pub fn request(key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut e = Enc::new(flexible(key, version));
    e.i16(key).i16(version).i32(correlation_id);
    e.b.extend_from_slice(&3i16.to_be_bytes());
    e.b.extend_from_slice(b"svc");
    e.tags().raw(body);
    let mut out = (e.b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&e.b);
    out
}

/// A whole response: size, correlation id, tagged fields (flexible versions) and body.
pub fn response(key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut e = Enc::new(flexible(key, version));
    e.i32(correlation_id).tags().raw(body);
    let mut out = (e.b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&e.b);
    out
}

fn topic(e: &mut Enc, v13: bool, name: &str) {
    if v13 {
        e.raw(&TOPIC_ID);
    } else {
        e.str(name);
    }
}

/// A topic and its partitions, as a test writes them.
pub type Topic<'a, P> = (&'a str, Vec<P>);

/// A Produce request body: `(topic, [(partition, records)])`.
pub fn produce(v: i16, acks: i16, topics: &[Topic<'_, (i32, Vec<u8>)>]) -> Vec<u8> {
    let mut e = Enc::new(flexible(PRODUCE, v));
    e.null_str().i16(acks).i32(30_000).len(topics.len());
    for (name, parts) in topics {
        topic(&mut e, v >= 13, name);
        e.len(parts.len());
        for (p, records) in parts {
            e.i32(*p).bytes(records).tags();
        }
        e.tags();
    }
    e.tags();
    e.b
}

/// A Produce response body: `(topic, [(partition, error, base offset)])`.
pub fn produced(v: i16, topics: &[Topic<'_, (i32, i16, i64)>]) -> Vec<u8> {
    let mut e = Enc::new(flexible(PRODUCE, v));
    e.len(topics.len());
    for (name, parts) in topics {
        topic(&mut e, v >= 13, name);
        e.len(parts.len());
        for (p, err, base) in parts {
            e.i32(*p).i16(*err).i64(*base).i64(-1);
            if v >= 5 {
                e.i64(0);
            }
            if v >= 8 {
                e.len(0).null_str();
            }
            e.tags();
        }
        e.tags();
    }
    e.i32(0).tags();
    e.b
}

/// A Fetch request body (the agent reads nothing of it but its header).
pub fn fetch(v: i16) -> Vec<u8> {
    let mut e = Enc::new(flexible(FETCH, v));
    e.i32(-1).i32(500).i32(1).i32(1 << 20).i8(0).len(0).tags();
    e.b
}

/// A Fetch response body: `(topic, [(partition, error, records)])`.
pub fn fetched(v: i16, topics: &[Topic<'_, (i32, i16, Vec<u8>)>]) -> Vec<u8> {
    let mut e = Enc::new(flexible(FETCH, v));
    e.i32(0);
    if v >= 7 {
        e.i16(0).i32(7);
    }
    e.len(topics.len());
    for (name, parts) in topics {
        topic(&mut e, v >= 13, name);
        e.len(parts.len());
        for (p, err, records) in parts {
            e.i32(*p).i16(*err).i64(100).i64(100);
            if v >= 5 {
                e.i64(0);
            }
            // One aborted transaction, to be skipped.
            e.len(1).i64(77).i64(3).tags();
            if v >= 11 {
                e.i32(-1);
            }
            e.bytes(records).tags();
        }
        e.tags();
    }
    e.tags();
    e.b
}

/// A Metadata response body (v10+): one broker, the topics with their ids and one partition.
pub fn metadata(v: i16, topics: &[(&str, [u8; 16])]) -> Vec<u8> {
    let mut e = Enc::new(flexible(METADATA, v));
    e.i32(0).len(1).i32(1).str("127.0.0.1").i32(9092).null_str().tags();
    e.str("cluster").i32(1).len(topics.len());
    for (name, id) in topics {
        e.i16(0).str(name).raw(id).i8(0).len(1);
        e.i16(0).i32(0).i32(1).i32(0).len(1).i32(1).len(1).i32(1).len(0).tags();
        e.i32(-2147483648).tags();
    }
    e.tags();
    e.b
}

fn conn() -> Conn<Kafka> {
    let mut c = Conn::new(Kafka::new(), Proto::Kafka);
    c.info.tuple.dport = 9092;
    c
}

fn no_secret(spans: &[SpanRecord]) {
    for s in spans {
        let text = format!("{s:?}");
        assert!(!text.contains(SECRET) && !text.contains("4242") && !text.contains("svc"), "{s:#?}");
    }
}

fn int(s: &SpanRecord, key: &str) -> Option<i64> {
    attr(s, key).map(|v| v.parse().unwrap())
}

#[test]
fn cursor_and_batches() {
    let b = [batch(5, 3), batch(8, 2)].concat();
    assert_eq!(record_batches(&b), Some(wire::Records { base_offset: 5, last_offset: 9, count: 5 }));
    // A batch whose header was cut is not counted; one cut in its records is.
    assert_eq!(record_batches(&b[..b.len() - 1]).map(|r| r.count), Some(5));
    let cut = batch(8, 2).len() + BATCH_HEADER - 1;
    assert_eq!(record_batches(&b[..b.len() - cut + 1]).map(|r| r.count), Some(3));
    assert_eq!(record_batches(&b[..10]), None);
    let mut old = batch(0, 1);
    old[16] = 1;
    assert_eq!(record_batches(&old), None, "magic 1");
    let mut c = Cursor::new(&[0x96, 0x01, 0xff]);
    assert_eq!(c.uvarint(), Ok(150));
    assert!(c.uvarint().is_err());
    assert!(Cursor::new(&[0xff; 8]).uvarint().is_err(), "too long");
    assert!(Cursor::new(&[0, 0, 0, 200]).array_len(false).is_err(), "more elements than bytes");
}

#[test]
fn produce_and_fetch_by_version() {
    for (pv, fv) in [(3, 4), (7, 11), (8, 12), (9, 13), (12, 16), (13, 17), (13, 18)] {
        let mut c = conn();
        if fv >= 13 || pv >= 13 {
            c.write(&request(METADATA, 12, 1, &[]));
            c.read(&response(METADATA, 12, 1, &metadata(12, &[("orders", TOPIC_ID)])));
        }
        for (i, o) in [0i64, 1, 2].into_iter().enumerate() {
            let id = 10 + i as i32;
            c.write(&request(PRODUCE, pv, id, &produce(pv, 1, &[("orders", vec![(0, batch(0, 1))])])));
            c.read(&response(PRODUCE, pv, id, &produced(pv, &[("orders", vec![(0, 0, o)])])));
        }
        c.write(&request(FETCH, fv, 20, &fetch(fv)));
        let records = [batch(0, 1), batch(1, 1), batch(2, 1)].concat();
        c.read(&response(FETCH, fv, 20, &fetched(fv, &[("orders", vec![(0, 0, records)])])));
        // An empty long poll: no span.
        c.write(&request(FETCH, fv, 21, &fetch(fv)));
        c.read(&response(FETCH, fv, 21, &fetched(fv, &[("orders", vec![(0, 0, Vec::new())])])));
        let spans = c.spans();
        no_secret(&spans);
        let what = format!("produce v{pv}, fetch v{fv}");
        assert_eq!(spans.len(), 4, "{what}: {spans:#?}");
        for (i, s) in spans[..3].iter().enumerate() {
            assert_eq!((s.name.as_str(), s.kind), ("send orders", SpanKind::Producer), "{what}");
            assert_eq!(attr(s, "messaging.system").as_deref(), Some("kafka"));
            assert_eq!(attr(s, "messaging.operation.name").as_deref(), Some("send"));
            assert_eq!(attr(s, "messaging.operation.type").as_deref(), Some("send"));
            assert_eq!(attr(s, "messaging.destination.name").as_deref(), Some("orders"));
            assert_eq!(attr(s, "messaging.destination.partition.id").as_deref(), Some("0"));
            assert_eq!(int(s, "messaging.kafka.offset"), Some(i as i64), "{what}");
            assert_eq!(int(s, "messaging.batch.message_count"), Some(1));
            assert_eq!(attr(s, "messaging.message.body.size"), None);
            assert_eq!(s.status, SpanStatus::Unset);
            assert!(s.parent_span_id.is_some(), "the write's context");
        }
        let r = &spans[3];
        assert_eq!((r.name.as_str(), r.kind), ("receive orders", SpanKind::Consumer), "{what}");
        assert_eq!(attr(r, "messaging.operation.type").as_deref(), Some("receive"));
        assert_eq!(int(r, "messaging.kafka.offset"), Some(0));
        assert_eq!(int(r, "messaging.batch.message_count"), Some(3));
        assert_eq!(c.stats.parse_errors, 0, "{what}");
    }
}

#[test]
fn partitions_errors_and_acks_zero() {
    let mut c = conn();
    let body = produce(
        9,
        -1,
        &[("a", vec![(0, batch(0, 2)), (1, [batch(0, 1), batch(1, 1)].concat())]), ("b", vec![(3, batch(0, 1))])],
    );
    c.write(&request(PRODUCE, 9, 1, &body));
    c.read(&response(PRODUCE, 9, 1, &produced(9, &[("a", vec![(0, 0, 40), (1, 6, -1)]), ("b", vec![(3, 0, 7)])])));
    c.write(&request(PRODUCE, 9, 2, &produce(9, 0, &[("a", vec![(2, batch(0, 4))])])));
    let spans = c.spans();
    no_secret(&spans);
    let got: Vec<_> = spans
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                attr(s, "messaging.destination.partition.id").unwrap(),
                int(s, "messaging.kafka.offset"),
                int(s, "messaging.batch.message_count").unwrap(),
                attr(s, "error.type"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("send a".into(), "0".into(), Some(40), 2, None),
            ("send a".into(), "1".into(), None, 2, Some("not_leader_or_follower".into())),
            ("send b".into(), "3".into(), Some(7), 1, None),
            ("send a".into(), "2".into(), None, 4, None),
        ]
    );
    assert_eq!(spans[1].status, SpanStatus::Error("not_leader_or_follower".into()));
    // One request's partitions share its trace and parent, each with its own span id.
    assert_eq!((spans[0].trace_id, spans[0].parent_span_id), (spans[1].trace_id, spans[1].parent_span_id));
    assert_ne!(spans[0].span_id, spans[1].span_id);
}

#[test]
fn fetch_of_several_partitions_and_unknown_topic_ids() {
    let mut c = conn();
    c.write(&request(FETCH, 13, 5, &fetch(13)));
    let parts = vec![(0, 0, batch(0, 2)), (1, 1, Vec::new()), (2, 0, batch(9, 1))];
    c.read(&response(FETCH, 13, 5, &fetched(13, &[("ignored", parts)])));
    let spans = c.spans();
    let hex: String = TOPIC_ID.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].name, format!("receive {hex}"), "an id no Metadata response named");
    assert_eq!(attr(&spans[1], "messaging.destination.partition.id").as_deref(), Some("2"));
    assert_eq!(int(&spans[1], "messaging.kafka.offset"), Some(9));
}

#[test]
fn topic_names_are_shared_and_bounded() {
    let mut c = conn();
    c.write(&request(METADATA, 13, 1, &[]));
    c.read(&response(METADATA, 13, 1, &metadata(13, &[("x", [1; 16]), ("orders", TOPIC_ID)])));
    assert_eq!(c.shared.kafka_topics.get(&TOPIC_ID), Some("orders"));
    assert_eq!(c.shared.kafka_topics.len(), 2);
    let mut names = super::TopicNames::default();
    for i in 0..(super::TOPIC_IDS + 3) {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        names.insert(id, format!("t{i}"));
    }
    assert_eq!((names.len(), names.evictions), (super::TOPIC_IDS, 3));
    assert_eq!(names.get(&[0; 16]), None, "the oldest went first");
}

#[test]
fn responses_pair_by_correlation_id() {
    let mut c = conn();
    let p = |id| request(PRODUCE, 7, id, &produce(7, 1, &[("t", vec![(0, batch(0, 1))])]));
    c.write(&p(1));
    c.write(&p(2));
    // Another request's response (ApiVersions) and an unknown id are ignored.
    c.write(&request(18, 3, 3, &[]));
    c.read(&response(18, 0, 3, &[0, 0]));
    c.read(&response(PRODUCE, 7, 99, &produced(7, &[("t", vec![(0, 0, 50)])])));
    // Request 1's response was lost: request 2's ends it.
    c.read(&response(PRODUCE, 7, 2, &produced(7, &[("t", vec![(0, 0, 8)])])));
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(int(&spans[0], "messaging.kafka.offset"), Some(8));
    assert_eq!(c.stats.unanswered_requests, 1);
    c.write(&p(4));
    c.end(EndReason::Closed);
    assert_eq!(c.stats.unanswered_requests, 2);
}

#[test]
fn split_transfers_and_gaps() {
    let mut c = conn();
    // A request written in two pieces and a response read size first (as kafka-python does).
    let req = request(PRODUCE, 7, 1, &produce(7, 1, &[("t", vec![(0, batch(0, 1))])]));
    c.write(&req[..3]);
    c.write(&req[3..]);
    let resp = response(PRODUCE, 7, 1, &produced(7, &[("t", vec![(0, 0, 3)])]));
    c.read(&resp[..4]);
    c.read(&resp[4..]);
    assert_eq!(c.spans().len(), 1);
    // A large produce: its records cut by the capture still give a span.
    let big = request(PRODUCE, 7, 2, &produce(7, 1, &[("t", vec![(0, [batch(0, 300)].concat())])]));
    assert!(big.len() > 4096);
    c.write(&big);
    c.read(&response(PRODUCE, 7, 2, &produced(7, &[("t", vec![(0, 0, 4)])])));
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(int(&spans[0], "messaging.batch.message_count"), Some(300));
    // Many responses in one read, cut in the middle: the framing is lost, then found again.
    for id in 3..40 {
        c.write(&request(PRODUCE, 7, id, &produce(7, 1, &[("t", vec![(0, batch(0, 1))])])));
    }
    let many: Vec<u8> =
        (3..40).flat_map(|id| response(PRODUCE, 7, id, &produced(7, &[("t", vec![(0, 0, i64::from(id))])]))).collect();
    c.read(&many);
    c.write(&request(PRODUCE, 7, 50, &produce(7, 1, &[("t", vec![(0, batch(0, 1))])])));
    c.read(&response(PRODUCE, 7, 50, &produced(7, &[("t", vec![(0, 0, 50)])])));
    let spans = c.spans();
    assert!(spans.iter().any(|s| int(s, "messaging.kafka.offset") == Some(50)), "{spans:#?}");
    assert!(spans.iter().all(|s| {
        let o = int(s, "messaging.kafka.offset").unwrap();
        (3..40).contains(&o) || o == 50
    }));
}

#[test]
fn reader_frames_with_gaps() {
    let mut r = Reader::new(16);
    let mut out = Vec::new();
    let msg = [&20i32.to_be_bytes()[..], &[7u8; 20]].concat();
    r.feed(&msg[..10], &msg[20..], 24, 1u8, &mut out);
    let WireEvent::Frame(f) = &out[0] else { panic!("{out:?}") };
    assert_eq!((f.len, f.body.len(), f.cut), (20, 6, true));
    out.clear();
    r.feed(&[0, 0], &[], 2, 2, &mut out);
    r.feed(&[0], &[], 1000, 3, &mut out);
    assert_eq!(out, [WireEvent::Lost]);
    assert!(r.is_lost());
    out.clear();
    let mut r = Reader::<u8>::new(16);
    r.feed(&[0xff, 0xff, 0xff, 0xff], &[], 4, 1, &mut out);
    assert_eq!(out, [WireEvent::Lost], "a negative size");
    assert_eq!(TopicRef::Name("a".into()), TopicRef::Name("a".into()));
}
