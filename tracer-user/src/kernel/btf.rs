//! Facts about the running kernel that the programs need at load time: `struct sock` offsets from
//! BTF (aya's Rust eBPF has no CO-RE) and tracepoint record layouts from tracefs.

use std::path::{Path, PathBuf};
use tracer_common::{FdOffsets, SockOffsets, TaskOffsets, TpOffsets};

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
    #[error("reading tracepoint format {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field}")]
    MissingField { tracepoint: String, field: String },
    #[error(
        "tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing); mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    NoTracefs,
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

fn open_btf(btf_path: &Path) -> Result<btf_rs::Btf, KernelInfoError> {
    // Mapped, not parsed up front: the cached backend builds a model of every kernel type
    // (about 40 MB at its peak for a 6 MB vmlinux BTF) to answer a dozen lookups.
    // Kernels before 6.10 cannot map /sys/kernel/btf/vmlinux: read it whole there.
    btf_rs::Btf::from_file_with_backend(btf_path, btf_rs::Backend::Mmap)
        .or_else(|_| btf_rs::Btf::from_file(btf_path))
        .map_err(|e| KernelInfoError::Btf { path: btf_path.to_owned(), source: e.into() })
}

/// Reads the offsets the kernel side needs to find the `struct sock` of an fd through the
/// current task's file table (`FdOffsets`), for kernels without the sock length tracepoints.
pub fn fd_offsets(btf_path: &Path) -> Result<FdOffsets, KernelInfoError> {
    let btf = open_btf(btf_path)?;
    let field = |strukt: &str, member: &str| struct_member(&btf, strukt, member);
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
pub fn task_offsets(btf_path: &Path) -> Result<TaskOffsets, KernelInfoError> {
    let btf = open_btf(btf_path)?;
    Ok(TaskOffsets {
        pid: struct_member(&btf, "task_struct", "pid")?,
        tgid: struct_member(&btf, "task_struct", "tgid")?,
    })
}

/// Whether the kernel has the `sock:sock_{send,recv}_length` tracepoints (Linux 6.3 and later),
/// which hand the data syscalls their `struct sock *`.
pub fn has_sock_length(tracefs: &Path) -> bool {
    ["sock_send_length", "sock_recv_length"].iter().all(|t| tracefs.join("events/sock").join(t).join("format").exists())
}

/// Reads the `struct sock_common` offsets the kernel side needs to read a connection's 4-tuple.
pub fn sock_offsets(btf_path: &Path) -> Result<SockOffsets, KernelInfoError> {
    let btf = open_btf(btf_path)?;
    let sock = find_struct(&btf, "sock")?;
    let common = find_struct(&btf, "sock_common")?;
    let base = member_offset(&btf, &sock, "__sk_common", 0)
        .ok_or_else(|| KernelInfoError::MissingType { what: "sock.__sk_common".into() })?;
    let field = |n: &str| {
        member_offset(&btf, &common, n, 0)
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
pub fn task_fsbase_offset(btf_path: &Path) -> Result<u64, KernelInfoError> {
    let btf = open_btf(btf_path)?;
    let a = struct_member(&btf, "task_struct", "thread")?;
    let b = struct_member(&btf, "thread_struct", "fsbase")?;
    Ok(u64::from(a) + u64::from(b))
}

/// The tracefs mount point.
pub fn tracefs() -> Result<PathBuf, KernelInfoError> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
        .ok_or(KernelInfoError::NoTracefs)
}

/// Offset of `field` in a tracefs `format` file's text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?.trim_start_matches('*');
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';').find_map(|p| p.trim().strip_prefix("offset:")).and_then(|v| v.trim().parse().ok())
    })
}

fn read_format(tracefs: &Path, tp: &str) -> Result<String, KernelInfoError> {
    let path = tracefs.join("events").join(tp).join("format");
    std::fs::read_to_string(&path).map_err(|source| KernelInfoError::Format { path, source })
}

/// Reads the layouts of the tracepoints whose records changed across kernel versions.
pub fn tp_offsets(tracefs: &Path) -> Result<TpOffsets, KernelInfoError> {
    let get = |tp: &str, text: &str, f: &str| {
        field_offset(text, f)
            .ok_or_else(|| KernelInfoError::MissingField { tracepoint: tp.to_owned(), field: f.to_owned() })
    };
    let fk = "sched/sched_process_fork";
    let fork = read_format(tracefs, fk)?;
    let mut tp = TpOffsets {
        fork_parent_pid: get(fk, &fork, "parent_pid")?,
        fork_child_pid: get(fk, &fork, "child_pid")?,
        ..TpOffsets::default()
    };
    // Only kernels from 6.3 have the sock length tracepoints; elsewhere the fd table is used.
    if has_sock_length(tracefs) {
        let sl = "sock/sock_send_length";
        let sock = read_format(tracefs, sl)?;
        tp.socklen_sk = get(sl, &sock, "sk")?;
        tp.socklen_family = get(sl, &sock, "family")?;
        tp.socklen_protocol = get(sl, &sock, "protocol")?;
        tp.socklen_flags = get(sl, &sock, "flags")?;
    }
    Ok(tp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_FMT: &str = "name: sock_send_length\nID: 2284\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;\n\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;\n\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;\n";
    const FORK_OLD: &str = "format:\n\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
    const FORK_NEW: &str = "format:\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";

    #[test]
    fn parses_format_files() {
        assert_eq!(field_offset(SOCK_FMT, "sk"), Some(8));
        assert_eq!(field_offset(SOCK_FMT, "protocol"), Some(18));
        assert_eq!(field_offset(SOCK_FMT, "flags"), Some(24));
        assert_eq!(field_offset(SOCK_FMT, "nope"), None);
        assert_eq!(field_offset(FORK_OLD, "child_pid"), Some(44));
        assert_eq!(field_offset(FORK_OLD, "parent_comm"), Some(8));
        assert_eq!(field_offset(FORK_NEW, "child_pid"), Some(20));
        assert_eq!(field_offset(FORK_NEW, "parent_comm"), Some(8));
    }

    #[test]
    fn reads_running_kernel_btf_when_present() {
        // Root is not needed to read BTF; skip where the kernel exposes none.
        let p = Path::new(VMLINUX_BTF);
        if !p.exists() {
            eprintln!("SKIP: {VMLINUX_BTF} absent");
            return;
        }
        let o = sock_offsets(p).expect("offsets");
        // struct sock_common starts with the address pair on every kernel since 2.6.
        assert_eq!((o.skc_daddr, o.skc_rcv_saddr), (0, 4));
        assert_eq!(o.valid, 1);
        assert!(o.skc_family > o.skc_num && o.skc_v6_daddr > o.skc_family);
        // `thread` is the last member of task_struct, thousands of bytes in.
        let fs = task_fsbase_offset(p).expect("fsbase offset");
        assert!(fs > 1024 && fs.is_multiple_of(8), "{fs}");
        // The fd-table path: pointers are 8-byte aligned; `fdtable` starts with `max_fds`.
        let f = fd_offsets(p).expect("fd-table offsets");
        assert_eq!((f.fdt_max_fds, f.enabled), (0, 0));
        for off in [f.task_files, f.files_fdt, f.fdt_fd, f.file_inode, f.file_private_data, f.socket_sk] {
            assert!(off.is_multiple_of(8), "{f:?}");
        }
        assert!(f.task_files > 1024 && f.sk_protocol > o.skc_v6_rcv_saddr, "{f:?}");
        // pid and tgid are adjacent 4-byte fields of task_struct, pid first.
        let t = task_offsets(p).expect("task offsets");
        assert!(t.pid > 0 && t.tgid == t.pid + 4, "{t:?}");
    }
}
