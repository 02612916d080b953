//! The OTLP exporter's environment: any values resolve or give a `ConfigError`, and neither the
//! resolved configuration nor the error ever shows a header value.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tracer_user::export::ExportConfig;
use tracer_user::export::config::{ALL_VARS as VARS, HEADERS, TRACES_HEADERS};

/// A header value no other variable can produce, so finding it in output means a leak.
const SECRET: &str = "s3cr3t-Zq9";

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mut env: Vec<(&str, String)> = Vec::new();
    for var in VARS {
        if u.arbitrary()? {
            let mut v: String = u.arbitrary()?;
            v.retain(|c| !SECRET.contains(c) || c == '-');
            env.push((var, v));
        }
    }
    // A credential header, in either variable, possibly among other entries.
    let var = if u.arbitrary()? { HEADERS } else { TRACES_HEADERS };
    let mut prefix: String = u.arbitrary()?;
    prefix.retain(|c| !SECRET.contains(c) || c == '-');
    let value = format!("{}authorization=Bearer%20{SECRET}", if u.arbitrary()? { "" } else { &prefix });
    env.retain(|(k, _)| *k != var);
    env.push((var, value));
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    match ExportConfig::from_lookup(lookup) {
        Ok(c) => {
            assert!(!format!("{c} {c:?}").contains(SECRET));
        }
        Err(e) => assert!(!format!("{e} {e:?}").contains(SECRET), "{e}"),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
