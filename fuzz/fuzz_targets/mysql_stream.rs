//! The MySQL protocol (packet readers, handshake, result sets, prepared statements, SQL
//! sanitising in the MySQL dialect) fed any transfers.
#![no_main]

mod db_common;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tracer_common::Proto;
use tracer_user::model::{AttrValue, SpanRecord};
use tracer_user::protocols::database::sql;
use tracer_user::protocols::mysql::Mysql;

/// A sanitised text never holds a string literal: no quote outside a backquoted identifier.
fn check(s: &SpanRecord) {
    tracer_fuzz::check_span(s);
    if let Some(AttrValue::Str(q)) = s.attr("db.query.text") {
        let mut in_ident = false;
        for c in q.chars() {
            match c {
                '`' => in_ident = !in_ident,
                '\'' | '"' => assert!(in_ident, "literal left in {q:?}"),
                _ => {}
            }
        }
        assert!(q.len() <= sql::MAX_QUERY + '…'.len_utf8());
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = db_common::drive(&mut Unstructured::new(data), &mut Mysql::new(), Proto::Mysql, check);
});
