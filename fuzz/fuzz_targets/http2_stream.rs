//! HTTP/2 (frame walker, HPACK, stream pairing) fed any transfers after the client's preface:
//! frames of any kind and length, header blocks of any bytes, gaps anywhere.
#![no_main]

mod db_common;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tracer_common::{ConnTuple, H2_PREFACE, Proto, Role};
use tracer_user::capture::event::Data;
use tracer_user::model::{AttrValue, SpanRecord};
use tracer_user::protocols::http2::Http2;
use tracer_user::protocols::protocol::{Cx, Protocol, ProtocolConfig, ProtocolStats};
use tracer_user::streams::ConnInfo;

/// A path never carries its query; a method is a bounded token.
fn check(s: &SpanRecord) {
    tracer_fuzz::check_span(s);
    if let Some(AttrValue::Str(p)) = s.attr("url.path") {
        assert!(!p.contains('?') && !p.contains('#'), "{p:?}");
    }
    if let Some(AttrValue::Str(m)) = s.attr("http.request.method_original") {
        assert!(m.len() <= 32, "{m:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut p = Http2::new();
    // Most inputs start the connection as the kernel saw it: the client writes the preface.
    if u.arbitrary::<u8>().map_or(true, |b| b < 240) {
        let mut tuple = ConnTuple { family: 2, sport: 40000, dport: 5432, ..Default::default() };
        tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let info = ConnInfo {
            tgid: 1,
            fd: 3,
            sock: 1,
            tuple,
            hint: Role::Client,
            proto: Proto::Http2,
            tls: false,
            last_activity_ns: 0,
            connect: None,
            tls_handshake: None,
            data_start_ns: 0,
            prev_activity_ns: None,
            claimed: false,
        };
        let config = ProtocolConfig { max_in_flight: 8, ..Default::default() };
        let mut stats = ProtocolStats::default();
        let mut out = Vec::new();
        let d = Data {
            start_ns: 100,
            end_ns: 110,
            tgid: 1,
            tid: 1,
            fd: 3,
            sock: 1,
            tuple,
            egress: true,
            syscall: 0,
            role: Role::Client,
            proto: Proto::Http2,
            tls: false,
            len: H2_PREFACE.len() as u32,
            ctx: None,
            head: Bytes::from_static(H2_PREFACE),
            tail: Bytes::new(),
        };
        p.on_data(&info, &d, &mut Cx::new(&config, &mut stats, &mut Default::default(), &mut out));
        assert!(out.is_empty());
    }
    let _ = db_common::drive(&mut u, &mut p, Proto::Http2, check);
});
