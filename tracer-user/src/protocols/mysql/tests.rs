//! MySQL and MariaDB through the protocol seam: transfers in, spans out.

use tracer_common::Proto;

use super::Mysql;
use crate::model::SpanStatus;
use crate::protocols::database::testkit::{Conn, attr, summary};

fn conn() -> Conn<Mysql> {
    let mut c = Conn::new(Mysql::new(), Proto::Mysql);
    c.info.tuple.dport = 3306;
    c
}

fn pkt(seq: u8, body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(body);
    v
}

fn greeting(version: &str) -> Vec<u8> {
    let mut b = vec![10];
    b.extend_from_slice(version.as_bytes());
    b.push(0);
    b.extend_from_slice(&[1, 0, 0, 0]);
    b.extend_from_slice(b"12345678\0");
    b.extend_from_slice(&[0xff, 0xf7, 0x21, 0x02, 0x00, 0xff, 0x81, 21]);
    b.extend_from_slice(&[0; 10]);
    b.extend_from_slice(b"123456789012\0mysql_native_password\0");
    pkt(0, &b)
}

/// A HandshakeResponse41 with CLIENT_CONNECT_WITH_DB (and CLIENT_DEPRECATE_EOF when `deprecate`).
fn response(db: &str, deprecate: bool) -> Vec<u8> {
    let caps: u32 = 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | 0x0000_0008 | if deprecate { 0x0100_0000 } else { 0 };
    let mut b = caps.to_le_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 1, 33]);
    b.extend_from_slice(&[0; 23]);
    b.extend_from_slice(b"app\0");
    b.push(20);
    b.extend_from_slice(&[7; 20]);
    b.extend_from_slice(db.as_bytes());
    b.push(0);
    b.extend_from_slice(b"mysql_native_password\0");
    pkt(1, &b)
}

fn ok(seq: u8) -> Vec<u8> {
    pkt(seq, &[0, 0, 0, 2, 0, 0, 0])
}

fn err(seq: u8, code: u16) -> Vec<u8> {
    let mut b = vec![0xff];
    b.extend_from_slice(&code.to_le_bytes());
    b.extend_from_slice(b"#42S02Table 'shop.secret' doesn't exist");
    pkt(seq, &b)
}

fn query(sql: &str) -> Vec<u8> {
    pkt(0, &[&[3], sql.as_bytes()].concat())
}

fn column(seq: u8) -> Vec<u8> {
    pkt(seq, b"\x03def\x04shop\x05items\x05items\x04name\x04name\x0c\x21\x00\xfd\x02\x00\x00\xfd\x00\x00\x00\x00\x00")
}

/// A result set of `rows` rows of one column, with EOF packets or (deprecate) a final OK.
fn result(rows: usize, deprecate: bool, more: bool) -> Vec<u8> {
    let status: u16 = 0x0002 | if more { 0x0008 } else { 0 };
    let mut v = pkt(1, &[1]);
    let mut seq = 2;
    v.extend(column(seq));
    seq += 1;
    if !deprecate {
        v.extend(pkt(seq, &[&[0xfe, 0, 0][..], &status.to_le_bytes()].concat()));
        seq += 1;
    }
    for _ in 0..rows {
        v.extend(pkt(seq, b"\x13secret-literal-4242"));
        seq = seq.wrapping_add(1);
    }
    if deprecate {
        v.extend(pkt(seq, &[&[0xfe, 0, 0][..], &status.to_le_bytes(), &[0, 0]].concat()));
    } else {
        v.extend(pkt(seq, &[&[0xfe, 0, 0][..], &status.to_le_bytes()].concat()));
    }
    v
}

fn handshake(c: &mut Conn<Mysql>, version: &str, deprecate: bool) {
    c.read(&greeting(version));
    c.write(&response("shop", deprecate));
    // An auth switch, its answer, then OK.
    c.read(&pkt(2, b"\xfemysql_native_password\0abcdefgh\0"));
    c.write(&pkt(3, &[9; 20]));
    c.read(&ok(4));
}

#[test]
fn queries_results_and_errors_with_either_terminator() {
    for deprecate in [false, true] {
        let mut c = conn();
        handshake(&mut c, "8.0.36", deprecate);
        c.write(&query("SELECT name FROM items WHERE name = 'secret-literal-4242' AND n = 4242"));
        c.read(&result(3, deprecate, false));
        c.write(&query("INSERT INTO items VALUES ('x', 1)"));
        c.read(&ok(1));
        c.write(&query("SELECT * FROM missing"));
        c.read(&err(1, 1146));
        c.write(&query("SELECT name FROM items WHERE 1 = 0"));
        c.read(&result(0, deprecate, false));
        let spans = c.spans();
        assert_eq!(
            summary(&spans),
            [
                ("SELECT items".into(), String::new(), false),
                ("INSERT items".into(), String::new(), false),
                ("SELECT missing".into(), "1146".into(), true),
                ("SELECT items".into(), String::new(), false),
            ],
            "deprecate EOF: {deprecate}"
        );
        let s = &spans[0];
        assert_eq!(attr(s, "db.system.name").as_deref(), Some("mysql"));
        assert_eq!(attr(s, "db.namespace").as_deref(), Some("shop"));
        assert_eq!(attr(s, "db.query.text").as_deref(), Some("SELECT name FROM items WHERE name = ? AND n = ?"));
        assert_eq!(attr(s, "server.port").as_deref(), Some("3306"));
        assert_eq!(c.in_flight(), 0);
    }
}

#[test]
fn mariadb_by_its_version_prepared_statements_reused() {
    for deprecate in [false, true] {
        let mut c = conn();
        handshake(&mut c, "5.5.5-10.11.6-MariaDB-0+deb12u1", deprecate);
        c.write(&pkt(0, b"\x16SELECT name FROM items WHERE n = ?"));
        // STMT_PREPARE_OK: id 7, one column, one parameter; then the definitions.
        let mut answer = pkt(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        answer.extend(column(2));
        if !deprecate {
            answer.extend(pkt(3, &[0xfe, 0, 0, 2, 0]));
        }
        answer.extend(column(4));
        if !deprecate {
            answer.extend(pkt(5, &[0xfe, 0, 0, 2, 0]));
        }
        c.read(&answer);
        for _ in 0..2 {
            c.write(&pkt(0, &[0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 0, 0x92, 0x10, 0, 0]));
            c.read(&result(2, deprecate, false));
        }
        c.write(&pkt(0, &[0x19, 7, 0, 0, 0]));
        c.write(&pkt(0, b"\x16SELECT * FROM nowhere WHERE x = ?"));
        c.read(&err(1, 1146));
        let spans = c.spans();
        assert_eq!(
            summary(&spans),
            [
                ("SELECT items".into(), String::new(), false),
                ("SELECT items".into(), String::new(), false),
                ("SELECT nowhere".into(), "1146".into(), true),
            ],
            "deprecate EOF: {deprecate}"
        );
        assert_eq!(attr(&spans[0], "db.system.name").as_deref(), Some("mariadb"));
        assert_eq!(attr(&spans[1], "db.query.text").as_deref(), Some("SELECT name FROM items WHERE n = ?"));
    }
}

/// Bytes go-sql-driver/mysql 1.10 and MariaDB 10.11 exchanged (strace of a client): the
/// handshake, CLIENT_DEPRECATE_EOF and MariaDB's metadata cache, so the execute's result has no
/// column definitions.
#[test]
fn go_sql_driver_and_mariadb_with_the_metadata_cache() {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    };
    let mut c = conn();
    c.read(&hex(concat!(
        "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b646562313275310004000000464f3b76",
        "6574395b00fef7080200ff81150000000000001d00000042754a51375d5262764a4d24006d7973716c5f6e6174",
        "6976655f70617373776f726400"
    )));
    c.write(&hex(concat!(
        "9d0000018ca23a01000000002d0000000000000000000000000000000000000010000000747261636572000073",
        "686f70006d7973716c5f6e61746976655f70617373776f726400590c5f636c69656e745f6e616d650f476f2d4d",
        "7953514c2d447269766572035f6f73056c696e7578095f706c6174666f726d05616d643634045f7069640532",
        "343839350c5f7365727665725f686f7374093132372e302e302e31"
    )));
    c.read(&hex("0700000200000002000000"));
    c.write(&pkt(0, b"\x16SELECT name FROM items WHERE n = ?"));
    c.read(&hex(concat!(
        "0c0000010001000000010001000000001700000203646566000000013f000c3f00000000000680000000002c00",
        "0003036465660473686f70056974656d73056974656d73046e616d65046e616d650c2d00fcff0300fc1000000000"
    )));
    c.write(&hex("1600000017010000000001000000000108000700000000000000"));
    c.read(&hex("02000001010007000002fe000022000000"));
    c.write(&hex("050000001901000000"));
    c.write(&hex("080000000353454c45432031"));
    c.read(&err(1, 1064));
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        [("SELECT items".into(), String::new(), false), ("SELEC".into(), "1064".into(), true)],
        "{spans:#?}"
    );
    assert_eq!(attr(&spans[0], "db.system.name").as_deref(), Some("mariadb"));
    assert_eq!(attr(&spans[0], "db.namespace").as_deref(), Some("shop"));
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn init_db_ping_and_multi_results() {
    let mut c = conn();
    handshake(&mut c, "8.0.36", true);
    c.write(&pkt(0, b"\x02other"));
    c.read(&ok(1));
    c.write(&pkt(0, b"\x0e"));
    c.read(&ok(1));
    c.write(&query("CALL p()"));
    let mut first = result(1, true, true);
    first.extend(pkt(9, &[0, 0, 0, 2, 0, 0, 0]));
    c.read(&first);
    assert_eq!(c.in_flight(), 0);
    c.write(&query("SELECT 1; SELECT 2"));
    c.read(&result(1, false, true));
    assert_eq!(c.in_flight(), 1, "a second result follows");
    c.read(&result(1, false, false));
    let spans = c.spans();
    assert_eq!(spans.len(), 2, "INIT_DB and PING are no spans: {spans:#?}");
    assert_eq!(attr(&spans[0], "db.namespace").as_deref(), Some("other"));
    assert_eq!(spans[0].name, "CALL");
    assert!(spans.iter().all(|s| s.status == SpanStatus::Unset));
}

#[test]
fn many_rows_in_a_gap_end_at_the_terminator_of_the_read() {
    let mut c = conn();
    handshake(&mut c, "8.0.36", false);
    c.write(&query("SELECT name FROM items"));
    c.read(&result(200, false, false));
    c.write(&query("SELECT name FROM items WHERE n = 1"));
    c.read(&result(1, false, false));
    let spans = c.spans();
    assert_eq!(summary(&spans).len(), 2);
    assert!(spans.iter().all(|s| s.status == SpanStatus::Unset));
    assert_eq!(c.in_flight(), 0);
    assert_eq!(c.stats.unmatched_responses, 0);
}

#[test]
fn a_connection_older_than_the_agent_and_one_that_asks_for_tls() {
    let mut c = conn();
    c.write(&query("UPDATE items SET n = n + 1"));
    c.read(&ok(1));
    assert_eq!(summary(&c.spans()), [("UPDATE items".into(), String::new(), false)]);
    let mut c = conn();
    c.read(&greeting("8.0.36"));
    let ssl = pkt(1, &[&0x0000_0a08u32.to_le_bytes()[..], &[0, 0, 0, 1, 33], &[0; 23]].concat());
    c.write(&ssl);
    c.write(&query("SELECT 1"));
    c.read(&ok(1));
    assert!(c.spans().is_empty(), "encrypted: not traced");
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..3000 {
        let mut c = conn();
        for _ in 0..(seed % 6) {
            let mut buf = Vec::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(b"\x00\x01\x03\x05\x07\x0a\x16\x17\xfe\xff\xfbSEL"[(seed % 14) as usize]);
            }
            c.transfer(seed.is_multiple_of(3), &buf, true);
        }
        c.idle(u64::MAX);
        let _ = c.spans();
    }
}
