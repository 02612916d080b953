//! Text the agent reads from the kernel: /proc/net/tcp tables, environment blocks
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use tracer_user::{discovery, process};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ports: HashSet<u16> = [80, 8080, 0].into_iter().collect();
    let _ = discovery::selector::parse_listening(&text, &ports);
    for (k, _) in process::parse_resource_attributes(&text) {
        assert!(!k.is_empty());
    }
    let environ: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let _ = process::service_from_env(&environ);
});
