//! The HTTP/1 stream parser, fed one direction of a connection in syscall-sized chunks with
//! gaps, response hints, resets and inferred ends in any order.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tracer_common::{MAX_PAYLOAD, TAIL_PAYLOAD};
use tracer_user::protocols::http1::framing::{MessageKind, ResponseHint, StreamParser};

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let kind = if u.arbitrary()? { MessageKind::Response } else { MessageKind::Request };
    let mut parser = if u.arbitrary()? {
        StreamParser::<u32>::with_max_head(kind, u.int_in_range(1..=4096)?)
    } else {
        StreamParser::<u32>::new(kind)
    };
    let mut out = Vec::new();
    let mut seq = 0u32;
    while !u.is_empty() {
        match u.int_in_range(0..=15u8)? {
            0 => parser.expect_response(ResponseHint { head: u.arbitrary()?, connect: u.arbitrary()? }),
            1 => {
                parser.end_unframed(&mut out);
            }
            2 => parser.clear_hints(),
            3 => parser.reset(),
            4 => parser.set_passthrough(),
            op => {
                // What the decoder lets through: head <= MAX_PAYLOAD, tail <= TAIL_PAYLOAD, both
                // no longer than the true length, which may leave a gap of any size.
                let n = usize::from(u.arbitrary::<u16>()?) % (MAX_PAYLOAD + 1);
                let head = u.bytes(n.min(u.len()))?;
                let t = if op > 12 { usize::from(u.arbitrary::<u8>()?) % (TAIL_PAYLOAD + 1) } else { 0 };
                let tail = u.bytes(t.min(u.len()))?;
                let gap = if op > 13 { u64::from(u.arbitrary::<u32>()?) } else { 0 };
                let len = head.len().max(tail.len()) as u64 + gap;
                seq += 1;
                parser.feed(head, tail, len, seq, &mut out);
            }
        }
        for ev in out.drain(..) {
            tracer_fuzz::check_message_event(&ev);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
