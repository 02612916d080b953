//! PostgreSQL through the protocol seam: transfers in, spans out.

use tracer_common::Proto;

use super::{Postgres, sqlstate};
use crate::model::{SpanId, SpanStatus};
use crate::protocols::database::testkit::{Conn, attr, summary};

fn conn() -> Conn<Postgres> {
    let mut c = Conn::new(Postgres::new(), Proto::Postgres);
    c.info.tuple.dport = 5432;
    c
}

fn msg(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![typ];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn startup(db: &str) -> Vec<u8> {
    let params = format!("user\0app\0database\0{db}\0\0");
    let mut v = ((params.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 3, 0, 0]);
    v.extend_from_slice(params.as_bytes());
    v
}

fn q(sql: &str) -> Vec<u8> {
    msg(b'Q', format!("{sql}\0").as_bytes())
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    msg(b'B', format!("{portal}\0{stmt}\0\0\0\0\0\0\0").as_bytes())
}

fn execute(portal: &str) -> Vec<u8> {
    msg(b'E', format!("{portal}\0\0\0\0\0").as_bytes())
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', format!("{tag}\0").as_bytes())
}

fn error(code: &str) -> Vec<u8> {
    msg(b'E', format!("SERROR\0VERROR\0C{code}\0Mrelation \"secret\" does not exist\0\0").as_bytes())
}

fn row(n: usize) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&(n as u32).to_be_bytes());
    body.extend(std::iter::repeat_n(b'v', n));
    msg(b'D', &body)
}

/// Startup answered: authentication ok, parameters, key, ready.
fn connected(c: &mut Conn<Postgres>, db: &str) {
    c.write(&startup(db));
    c.read(&[msg(b'R', &[0, 0, 0, 0]), msg(b'S', b"server_version\x0015\0"), msg(b'K', &[0; 8]), ready()].concat());
    assert!(c.spans().is_empty());
}

fn s(name: &str, code: &str, err: bool) -> (String, String, bool) {
    (name.to_owned(), code.to_owned(), err)
}

#[test]
fn simple_query_with_conventions_and_no_literal() {
    let mut c = conn();
    connected(&mut c, "shop");
    c.write(&q("SELECT name FROM users WHERE email = 'alice@example.com' AND id = 42"));
    c.read(&[msg(b'T', &[0, 1, b'n', 0]), row(5), complete("SELECT 1"), ready()].concat());
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![s("SELECT users", "", false)]);
    let span = &spans[0];
    assert_eq!(attr(span, "db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(attr(span, "db.namespace").as_deref(), Some("shop"));
    assert_eq!(attr(span, "db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(attr(span, "db.collection.name").as_deref(), Some("users"));
    assert_eq!(attr(span, "db.query.text").as_deref(), Some("SELECT name FROM users WHERE email = ? AND id = ?"));
    assert_eq!(attr(span, "server.port").as_deref(), Some("5432"));
    for a in &span.attributes {
        let v = a.value.to_string();
        assert!(!v.contains("alice") && !v.contains("42"), "{}: {v}", a.key);
    }
    assert_eq!(span.span_id, SpanId([2; 8]), "the context of the query's write");
    assert_eq!(span.parent_span_id, Some(SpanId([0xaa; 8])));
}

#[test]
fn simple_query_errors_carry_the_sqlstate() {
    let mut c = conn();
    connected(&mut c, "shop");
    c.write(&q("SELEC 1"));
    c.read(&[error("42601"), ready()].concat());
    c.write(&q("SELECT * FROM missing"));
    c.read(&[error("42P01"), ready()].concat());
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![s("SELEC", "42601", true), s("SELECT missing", "42P01", true)]);
    assert_eq!(spans[0].status, SpanStatus::Error("42601".into()));
    assert!(spans.iter().all(|s| !s.attributes.iter().any(|a| a.value.to_string().contains("secret"))));
}

#[test]
fn extended_protocol_prepared_statements_are_reused_by_name() {
    let mut c = conn();
    connected(&mut c, "shop");
    // pgx: prepare (Parse/Describe/Sync), then Bind/Describe/Execute/Sync per call.
    c.write(
        &[parse("stmtcache_1", "SELECT price FROM items WHERE id = $1"), msg(b'D', b"Sstmtcache_1\0"), sync()].concat(),
    );
    c.read(&[msg(b'1', b""), msg(b't', &[0, 1, 0, 0, 0, 23]), msg(b'T', &[0, 0]), ready()].concat());
    assert!(c.spans().is_empty(), "preparing is no call");
    for _ in 0..2 {
        c.write(&[bind("", "stmtcache_1"), msg(b'D', b"P\0"), execute(""), sync()].concat());
        c.read(&[msg(b'2', b""), msg(b'T', &[0, 0]), row(3), complete("SELECT 1"), ready()].concat());
    }
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![s("SELECT items", "", false); 2]);
    assert_eq!(attr(&spans[1], "db.query.text").as_deref(), Some("SELECT price FROM items WHERE id = $1"));
}

#[test]
fn pipelined_batch_one_span_per_execute_and_errors_skip_the_rest() {
    let mut c = conn();
    connected(&mut c, "shop");
    let batch = [
        parse("", "INSERT INTO items (name) VALUES ($1)"),
        bind("", ""),
        execute(""),
        parse("", "UPDATE items SET n = n + 1"),
        bind("", ""),
        execute(""),
        sync(),
        parse("", "SELECT * FROM nope"),
        bind("", ""),
        execute(""),
        parse("", "DELETE FROM items"),
        bind("", ""),
        execute(""),
        sync(),
        q("SELECT 1"),
    ]
    .concat();
    c.write(&batch);
    c.read(&[msg(b'1', b""), msg(b'2', b""), complete("INSERT 0 1"), msg(b'1', b""), msg(b'2', b"")].concat());
    c.read(&[complete("UPDATE 3"), ready(), error("42P01"), ready()].concat());
    c.read(&[msg(b'T', &[0, 0]), row(1), complete("SELECT 1"), ready()].concat());
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        vec![
            s("INSERT items", "", false),
            s("UPDATE items", "", false),
            s("SELECT nope", "42P01", true),
            // Never ran: the server skipped it after the error.
            s("DELETE items", "", false),
            s("SELECT", "", false),
        ]
    );
    let mut ids: Vec<_> = spans.iter().map(|s| s.span_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
}

#[test]
fn parse_errors_land_on_the_execute_that_never_runs() {
    let mut c = conn();
    connected(&mut c, "shop");
    c.write(&[parse("", "SELEC $1"), bind("", ""), execute(""), sync()].concat());
    c.read(&[error("42601"), ready()].concat());
    assert_eq!(summary(&c.spans()), vec![s("SELEC", "42601", true)]);
}

#[test]
fn a_failed_prepare_is_a_call() {
    let mut c = conn();
    connected(&mut c, "shop");
    c.write(
        &[parse("stmtcache_9", "SELECT * FROM missing_table WHERE id = 1"), msg(b'D', b"Sstmtcache_9\0"), sync()]
            .concat(),
    );
    c.read(&[error("42P01"), ready()].concat());
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![s("SELECT missing_table", "42P01", true)]);
    assert_eq!(attr(&spans[0], "db.query.text").as_deref(), Some("SELECT * FROM missing_table WHERE id = ?"));
    // A prepare that succeeds is no call.
    c.write(&[parse("stmtcache_8", "SELECT 1"), msg(b'D', b"Sstmtcache_8\0"), sync()].concat());
    c.read(&[msg(b'1', b""), msg(b'T', &[0, 0]), ready()].concat());
    assert!(c.spans().is_empty());
}

#[test]
fn ssl_refused_goes_on_in_plain_text_and_accepted_stops() {
    let mut c = conn();
    c.write(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    c.read(b"N");
    connected(&mut c, "inventory");
    c.write(&q("SELECT 1"));
    c.read(&[complete("SELECT 1"), ready()].concat());
    let spans = c.spans();
    assert_eq!(attr(&spans[0], "db.namespace").as_deref(), Some("inventory"));
    let mut c = conn();
    c.write(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    c.read(b"S");
    c.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    c.read(b"\x16\x03\x03\x00\x7a\x02");
    assert!(c.spans().is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_big_result_in_a_gap_costs_nothing_when_headers_survive() {
    let mut c = conn();
    connected(&mut c, "shop");
    c.write(&q("SELECT blob FROM files"));
    c.read(&[row(50_000), complete("SELECT 1"), ready()].concat());
    assert_eq!(summary(&c.spans()), vec![s("SELECT files", "", false)]);
}

#[test]
fn replies_lost_in_a_gap_end_as_unknown_and_never_shift() {
    let mut c = conn();
    connected(&mut c, "shop");
    c.write(&q("SELECT * FROM big"));
    // Many rows: their headers fall into the gap. The read does not end at a ReadyForQuery.
    let rows: Vec<u8> = (0..200).flat_map(|_| row(20)).collect();
    c.read(&rows);
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![s("SELECT big", "", false)]);
    assert_eq!(spans[0].status, SpanStatus::Unset);
    // The rest of the reply, ending with ReadyForQuery: back in step after it.
    c.read(&[row(20), complete("SELECT 201"), ready()].concat());
    assert!(c.spans().is_empty());
    c.write(&q("SELECT 1"));
    c.read(&[error("57014"), ready()].concat());
    assert_eq!(summary(&c.spans()), vec![s("SELECT", "57014", true)]);
}

#[test]
fn pipelined_groups_over_a_lost_reply_wait_for_quiet() {
    let mut c = conn();
    connected(&mut c, "shop");
    c.write(&[q("SELECT * FROM big"), q("SELECT 2")].concat());
    let rows: Vec<u8> = (0..200).flat_map(|_| row(20)).collect();
    c.read(&[rows, complete("SELECT 200"), ready()].concat());
    assert_eq!(summary(&c.spans()), vec![s("SELECT big", "", false), s("SELECT", "", false)]);
    // The second query's reply may still be coming: nothing is paired until quiet.
    c.read(&[complete("SELECT 1"), ready()].concat());
    c.write(&q("SELECT 3"));
    c.read(&[complete("SELECT 1"), ready()].concat());
    assert!(c.spans().is_empty());
    c.idle(c.config.desync_timeout_ns);
    assert_eq!(summary(&c.spans()), vec![s("SELECT", "", false)]);
    c.write(&q("SELECT 4"));
    c.read(&[error("22012"), ready()].concat());
    assert_eq!(summary(&c.spans()), vec![s("SELECT", "22012", true)]);
}

#[test]
fn requests_lost_in_a_gap_end_what_waits() {
    let mut c = conn();
    connected(&mut c, "shop");
    // A batch whose later messages fall into the gap of one big write.
    let mut batch = Vec::new();
    for _ in 0..40 {
        batch.extend([parse("", "INSERT INTO t VALUES ($1)"), bind("", ""), execute("")].concat());
    }
    batch.extend(sync());
    c.write(&batch);
    assert!(c.stats.parse_errors > 0);
    let n = c.spans().len();
    assert!(n > 0, "the calls seen before the gap end as unknown");
    c.read(&[complete("INSERT 0 1"), ready()].concat());
    assert!(c.spans().is_empty(), "replies are not paired while the count is unknown");
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn sqlstate_of_error_fields() {
    assert_eq!(sqlstate(b"SERROR\0C42601\0Mbad\0\0").as_deref(), Some("42601"));
    assert_eq!(sqlstate(b"SERROR\0Mbad\0\0"), None);
    assert_eq!(sqlstate(b"C4260"), None);
    assert_eq!(sqlstate(b""), None);
}
