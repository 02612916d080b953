//! Which processes are traced: the first test of every program on the data path.

use crate::{
    config::{AGENT_TGID, TRACE_ALL, cfg},
    maps::{EXCLUDED, TRACED},
};

#[inline(always)]
pub fn traced(tgid: u32) -> bool {
    if tgid == cfg(&AGENT_TGID) {
        return false;
    }
    // SAFETY: values are plain bytes; only presence is tested.
    if unsafe { EXCLUDED.get(&tgid) }.is_some() {
        return false;
    }
    if cfg(&TRACE_ALL) != 0 {
        return true;
    }
    // SAFETY: as above.
    unsafe { TRACED.get(&tgid) }.is_some()
}
