//! Kernel programs of the `tracer` agent.
//!
//! Socket I/O is seen through raw tracepoints only (`sys_enter`, `sys_exit` and the `sock` length
//! events; no kprobes, no fentry), so the agent works on kernels in lockdown and without
//! CONFIG_KPROBES. Processes are filtered in the kernel before
//! anything is copied; the agent's own process is never traced. Every failed ring-buffer
//! reservation is counted. Program families, one module each:
//!
//! * [`socket`]: the data path (reads, writes, connection set-up and close);
//! * [`context`]: trace ids and the contexts that link spans;
//! * [`sockops`]: propagation of the context to other hosts in a TCP option;
//! * [`process`]: fork, exec, exit;
//! * [`go`]: uprobes on Go programs (goroutine ancestry, net/http, net/rpc, grpc-go);
//! * [`doctor`]: no-op programs `tracer doctor` loads to learn what the kernel allows.
//!
//! [`config`] holds what userspace sets before loading, [`maps`] the shared maps and the helpers
//! that keep every table's counters; program and map names are `tracer_common::names`.
#![no_std]
#![no_main]
// The reference build without log statements leaves what only they used unused.
#![cfg_attr(feature = "no-klog", allow(unused_variables, unused_imports))]

mod config;
mod context;
mod doctor;
mod filter;
mod go;
mod klog;
mod maps;
mod process;
mod socket;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The programs call GPL-only helpers (`bpf_probe_read_*`), so the object is dual licensed
/// MIT/GPL, which the kernel accepts as GPL-compatible.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
