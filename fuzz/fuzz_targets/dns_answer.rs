//! DNS answers as the kernel captures them (any bytes, cut at the capture size) fed to the
//! lookups table, then asked for the lookup before a connect and for a peer's name.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tracer_user::dns::Lookups;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut lookups = Lookups::default();
    let mut t = 0u64;
    // `Unstructured` hands out defaults once its bytes are used up: stop there.
    while !u.is_empty() {
        let len = u.int_in_range(0..=1024usize).unwrap_or(0);
        let Ok(bytes) = u.bytes(len.min(u.len())) else { break };
        let tgid = u.int_in_range(1..=3u32).unwrap_or(1);
        let took = u.int_in_range(0..=2_000_000_000u64).unwrap_or(0);
        t += u.int_in_range(0..=3_000_000_000u64).unwrap_or(0);
        let before = lookups.stats();
        let res = lookups.on_answer(tgid, t, t + took, bytes);
        let after = lookups.stats();
        // Every answer is either read or counted as unreadable, and says why.
        assert_eq!(after.answers + after.unreadable, before.answers + before.unreadable + 1);
        assert_eq!(res.is_err(), after.unreadable > before.unreadable);
        let Ok(peer) = IpAddr::arbitrary(&mut u) else { break };
        let at = t + u.int_in_range(0..=3_000_000_000u64).unwrap_or(0);
        if let Some((lookup, name)) = lookups.for_connect(tgid, peer, at) {
            assert!(lookup.start_ns <= lookup.end_ns && lookup.end_ns <= at, "{lookup:?} before {at}");
            assert!(lookup.addresses > 0 && lookup.rcode.is_none(), "{lookup:?}");
            assert_eq!(&*name, name.to_ascii_lowercase(), "names are kept lower-case");
            assert!(lookups.name_of(tgid, peer).is_some());
        }
    }
});
