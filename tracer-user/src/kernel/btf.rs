//! Facts about the running kernel that the programs need at load time, from its BTF (aya's Rust
//! eBPF has no CO-RE): `struct sock`, file-table and `task_struct` offsets, which tracepoints
//! exist, and that `struct pt_regs` has the layout the syscall programs read.

use std::path::{Path, PathBuf};
use tracer_common::{FdOffsets, SockOffsets, TaskOffsets};

#[derive(Debug, thiserror::Error)]
pub enum KernelInfoError {
    #[error("reading BTF from {path}: {source}")]
    Btf {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
    #[error("BTF has no {what}")]
    MissingType { what: String },
    #[error(
        "struct pt_regs.{field} is at offset {found} in this kernel's BTF, not {want}: the syscall programs read the x86-64 layout"
    )]
    Regs { field: &'static str, found: u32, want: u32 },
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offset of a (possibly nested, through anonymous structs/unions) member of a struct.
fn member_offset(btf: &btf_rs::Btf, st: &btf_rs::Struct, name: &str, depth: u32) -> Option<u32> {
    if depth > 4 {
        return None;
    }
    for m in &st.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Some(m.bit_offset() / 8);
        }
        if mname.is_empty()
            && let Ok(btf_rs::Type::Struct(inner) | btf_rs::Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(off) = member_offset(btf, &inner, name, depth + 1)
        {
            return Some(m.bit_offset() / 8 + off);
        }
    }
    None
}

fn find_struct(btf: &btf_rs::Btf, name: &str) -> Result<btf_rs::Struct, KernelInfoError> {
    btf.resolve_types_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find_map(|t| match t {
            btf_rs::Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| KernelInfoError::MissingType { what: format!("struct {name}") })
}

/// Byte offset of `strukt.member`, or which of the two this kernel's BTF lacks.
fn struct_member(btf: &btf_rs::Btf, strukt: &str, member: &str) -> Result<u32, KernelInfoError> {
    let st = find_struct(btf, strukt)?;
    member_offset(btf, &st, member, 0)
        .ok_or_else(|| KernelInfoError::MissingType { what: format!("{strukt}.{member}") })
}

/// Opens a BTF file (the running kernel's is [`VMLINUX_BTF`]) once for the readers below.
pub fn open_btf(btf_path: &Path) -> Result<btf_rs::Btf, KernelInfoError> {
    // Mapped, not parsed up front: the cached backend builds a model of every kernel type
    // (about 40 MB at its peak for a 6 MB vmlinux BTF) to answer a dozen lookups.
    // Kernels before 6.10 cannot map /sys/kernel/btf/vmlinux: read it whole there.
    btf_rs::Btf::from_file_with_backend(btf_path, btf_rs::Backend::Mmap)
        .or_else(|_| btf_rs::Btf::from_file(btf_path))
        .map_err(|e| KernelInfoError::Btf { path: btf_path.to_owned(), source: e.into() })
}

/// Reads the offsets the kernel side needs to find the `struct sock` of an fd through the
/// current task's file table (`FdOffsets`), for kernels without the sock length tracepoints.
pub fn fd_offsets(btf: &btf_rs::Btf) -> Result<FdOffsets, KernelInfoError> {
    let field = |strukt: &str, member: &str| struct_member(btf, strukt, member);
    Ok(FdOffsets {
        task_files: field("task_struct", "files")?,
        files_fdt: field("files_struct", "fdt")?,
        fdt_max_fds: field("fdtable", "max_fds")?,
        fdt_fd: field("fdtable", "fd")?,
        file_inode: field("file", "f_inode")?,
        file_private_data: field("file", "private_data")?,
        inode_mode: field("inode", "i_mode")?,
        socket_sk: field("socket", "sk")?,
        sk_protocol: field("sock", "sk_protocol")?,
        enabled: 0,
    })
}

/// Reads `task_struct.pid` and `.tgid`: the sockops program learns the current process from its
/// task (`TaskOffsets`).
pub fn task_offsets(btf: &btf_rs::Btf) -> Result<TaskOffsets, KernelInfoError> {
    Ok(TaskOffsets { pid: struct_member(btf, "task_struct", "pid")?, tgid: struct_member(btf, "task_struct", "tgid")? })
}

/// Whether the kernel has the `sock:sock_{send,recv}_length` tracepoints (Linux 6.3 and later),
/// which hand the data syscalls their `struct sock *`: each raw tracepoint has a
/// `btf_trace_<name>` type in the kernel's BTF.
pub fn has_sock_length(btf: &btf_rs::Btf) -> bool {
    ["sock_send_length", "sock_recv_length"].iter().all(|t| has_raw_tracepoint(btf, t))
}

/// Whether the kernel has raw tracepoint `name` (its `btf_trace_<name>` typedef).
pub fn has_raw_tracepoint(btf: &btf_rs::Btf, name: &str) -> bool {
    btf.resolve_types_by_name(&format!("btf_trace_{name}"))
        .is_ok_and(|v| v.iter().any(|t| matches!(t, btf_rs::Type::Typedef(_))))
}

/// The offsets of `struct pt_regs` the raw syscall programs read (`tracer-ebpf`'s `SysRegs`):
/// x86-64's user ABI, checked against the kernel's BTF so a different layout refuses to load
/// rather than reading the wrong registers.
pub const PT_REGS: &[(&str, u32)] =
    &[("r10", 56), ("r8", 72), ("dx", 96), ("si", 104), ("di", 112), ("orig_ax", 120), ("cs", 136)];

/// Checks [`PT_REGS`] against this kernel's BTF.
pub fn check_pt_regs(btf: &btf_rs::Btf) -> Result<(), KernelInfoError> {
    for &(field, want) in PT_REGS {
        let found = struct_member(btf, "pt_regs", field)?;
        if found != want {
            return Err(KernelInfoError::Regs { field, found, want });
        }
    }
    Ok(())
}

/// Reads the `struct sock_common` offsets the kernel side needs to read a connection's 4-tuple.
pub fn sock_offsets(btf: &btf_rs::Btf) -> Result<SockOffsets, KernelInfoError> {
    let sock = find_struct(btf, "sock")?;
    let common = find_struct(btf, "sock_common")?;
    let base = member_offset(btf, &sock, "__sk_common", 0)
        .ok_or_else(|| KernelInfoError::MissingType { what: "sock.__sk_common".into() })?;
    let field = |n: &str| {
        member_offset(btf, &common, n, 0)
            .map(|o| o + base)
            .ok_or_else(|| KernelInfoError::MissingType { what: format!("sock_common.{n}") })
    };
    Ok(SockOffsets {
        skc_daddr: field("skc_daddr")?,
        skc_rcv_saddr: field("skc_rcv_saddr")?,
        skc_dport: field("skc_dport")?,
        skc_num: field("skc_num")?,
        skc_family: field("skc_family")?,
        skc_v6_daddr: field("skc_v6_daddr")?,
        skc_v6_rcv_saddr: field("skc_v6_rcv_saddr")?,
        valid: 1,
    })
}

/// Offset of `task_struct.thread.fsbase` (x86-64): where the kernel keeps a thread's FS base,
/// through which the Go support finds the running goroutine.
pub fn task_fsbase_offset(btf: &btf_rs::Btf) -> Result<u64, KernelInfoError> {
    let a = struct_member(btf, "task_struct", "thread")?;
    let b = struct_member(btf, "thread_struct", "fsbase")?;
    Ok(u64::from(a) + u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_running_kernel_btf_when_present() {
        // Root is not needed to read BTF; skip where the kernel exposes none.
        let p = Path::new(VMLINUX_BTF);
        if !p.exists() {
            eprintln!("SKIP: {VMLINUX_BTF} absent");
            return;
        }
        let btf = open_btf(p).expect("BTF");
        let o = sock_offsets(&btf).expect("offsets");
        // struct sock_common starts with the address pair on every kernel since 2.6.
        assert_eq!((o.skc_daddr, o.skc_rcv_saddr), (0, 4));
        assert_eq!(o.valid, 1);
        assert!(o.skc_family > o.skc_num && o.skc_v6_daddr > o.skc_family);
        // `thread` is the last member of task_struct, thousands of bytes in.
        let fs = task_fsbase_offset(&btf).expect("fsbase offset");
        assert!(fs > 1024 && fs.is_multiple_of(8), "{fs}");
        // The fd-table path: pointers are 8-byte aligned; `fdtable` starts with `max_fds`.
        let f = fd_offsets(&btf).expect("fd-table offsets");
        assert_eq!((f.fdt_max_fds, f.enabled), (0, 0));
        for off in [f.task_files, f.files_fdt, f.fdt_fd, f.file_inode, f.file_private_data, f.socket_sk] {
            assert!(off.is_multiple_of(8), "{f:?}");
        }
        assert!(f.task_files > 1024 && f.sk_protocol > o.skc_v6_rcv_saddr, "{f:?}");
        // pid and tgid are adjacent 4-byte fields of task_struct, pid first.
        let t = task_offsets(&btf).expect("task offsets");
        assert!(t.pid > 0 && t.tgid == t.pid + 4, "{t:?}");
        // The syscall programs' register layout, and a tracepoint every supported kernel has
        // next to one that no kernel has.
        check_pt_regs(&btf).expect("x86-64 pt_regs");
        assert!(has_raw_tracepoint(&btf, "sys_enter") && has_raw_tracepoint(&btf, "sched_process_fork"));
        assert!(!has_raw_tracepoint(&btf, "no_such_tracepoint"));
    }
}
