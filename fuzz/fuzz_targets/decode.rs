//! Ring-buffer records: any bytes either decode or give a `DecodeError`; a decoded data event
//! encodes back to a record that decodes to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::capture::decode::decode;
use tracer_user::capture::encode;
use tracer_user::capture::event::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(Event::Data(d)) = decode(data) {
        assert!(d.head.len() <= tracer_common::MAX_PAYLOAD);
        assert!(d.tail.len() <= tracer_common::TAIL_PAYLOAD);
        assert!(d.head.len() as u64 <= u64::from(d.len) && d.tail.len() as u64 <= u64::from(d.len));
        let again = decode(&encode::data(&d)).expect("re-encoded record decodes");
        assert_eq!(again, Event::Data(d));
    }
});
