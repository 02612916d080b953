//! OpenSSL's uprobes (`tracer-ebpf/src/socket/tls.rs`): TLS plaintext into the socket data path.
//!
//! When every process is traced, the probes go on the library file, once per file (device and
//! inode), for every process that maps it: a process started after the file was probed is traced
//! from its first call, however short-lived. Files are found
//!
//! * at start, in the host's library directories and in the maps of every running process;
//! * at each exec, in the library directories under the new program's root (a container's own
//!   OpenSSL), once per root: the dynamic loader maps the library only after the exec, and a
//!   Python or Ruby program opens it later still, with `dlopen`;
//! * when a process first shows up, in its maps (a library outside those directories).
//!
//! When only selected processes are traced, the probes go on each selected process alone (the
//! files of its root's library directories and of its maps, as soon as it is selected: at its
//! exec, or at start), so that the processes the agent does not trace pay no uprobe trap; they
//! are removed when it exits.
//!
//! OpenSSL 1.1 and 3.x export the same six functions (`SSL_write`, `SSL_read`, their `_ex`
//! forms, `SSL_do_handshake` and `SSL_free`); no struct offset of any release is needed, since the socket comes from
//! the syscall the call makes. A statically linked OpenSSL (node) or BoringSSL is not probed.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::ProgramArray;
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeLink, UProbeLinkId, UProbeScope};
use log::{info, warn};
use tracer_common::names::{maps, programs};

/// The entry probes and the function each goes on; `SSL_RET` goes on the four data calls' returns,
/// `SSL_HANDSHAKE_RET` on `SSL_do_handshake`'s.
const ENTRIES: [(&str, &str); 6] = [
    (programs::SSL_WRITE, "SSL_write"),
    (programs::SSL_READ, "SSL_read"),
    (programs::SSL_WRITE_EX, "SSL_write_ex"),
    (programs::SSL_READ_EX, "SSL_read_ex"),
    (programs::SSL_FREE, "SSL_free"),
    (programs::SSL_DO_HANDSHAKE, "SSL_do_handshake"),
];
const RETURNS: [(&str, &str); 5] = [
    (programs::SSL_RET, "SSL_write"),
    (programs::SSL_RET, "SSL_read"),
    (programs::SSL_RET, "SSL_write_ex"),
    (programs::SSL_RET, "SSL_read_ex"),
    (programs::SSL_HANDSHAKE_RET, "SSL_do_handshake"),
];

/// Where distributions put `libssl.so.*`.
const LIB_DIRS: [&str; 6] =
    ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib"];

/// A file: device and inode.
type FileId = (u64, u64);

type Links = Vec<(&'static str, UProbeLinkId)>;

/// The OpenSSL probes of the agent.
#[derive(Default)]
pub struct SslProbes {
    /// Probes per traced process rather than per file for every process.
    per_process: bool,
    /// `--tls off`: no probes.
    off: bool,
    /// `Some(Ok)` once the programs loaded, `Some(Err)` when they could not (then never again).
    loaded: Option<Result<(), String>>,
    /// Probed files (and the process the probes are for, when per process) and their links.
    files: HashMap<(FileId, Option<u32>), Links>,
    /// Files that could not be probed (not OpenSSL, or an attach failed): not tried again.
    refused: HashSet<FileId>,
    /// Roots (device and inode of `/proc/<pid>/root`) whose library directories were searched.
    roots: HashSet<FileId>,
}

/// Whether a file name is OpenSSL's libssl (`libssl.so`, `libssl.so.3`, `libssl.so.1.1`).
pub fn is_libssl(name: &str) -> bool {
    name == "libssl.so" || name.strip_prefix("libssl.so.").is_some_and(|v| !v.is_empty())
}

/// The libssl files `/proc/<pid>/maps` text names (paths as the process sees them).
pub fn libssl_in_maps(maps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut f = line.split_whitespace();
        let (Some(_), Some(perms), Some(_), Some(_), Some(_), Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if perms.contains('x') && path.starts_with('/') && is_libssl(name) && !out.iter().any(|p| p == path) {
            out.push(path.to_owned());
        }
    }
    out
}

impl SslProbes {
    /// `per_process`: only selected processes are traced (see the module's text); `tls`:
    /// `--tls` (OpenSSL is probed unless it is `off`).
    pub fn new(per_process: bool, tls: crate::cli::TlsMode) -> Self {
        Self { per_process, off: tls == crate::cli::TlsMode::Off, ..Self::default() }
    }

    /// Uprobe links attached (each file's nine).
    pub fn attached_links(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    /// Probes the host's libssl files and those every running process maps; with `--tls off`,
    /// none ever.
    pub fn start(&mut self, ebpf: &mut Ebpf) {
        if self.off {
            info!("TLS plaintext (OpenSSL) not traced: --tls off");
            self.loaded = Some(Err("--tls off".into()));
            return;
        }
        if self.per_process {
            return;
        }
        self.search_root(ebpf, Path::new("/"), None);
        if let Ok(m) = std::fs::metadata("/") {
            self.roots.insert((m.dev(), m.ino()));
        }
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                self.mapped(ebpf, pid);
            }
        }
    }

    /// A process exec'd (`traced`: the agent traces it): every process's probes go on its root's
    /// library files, once per root; a traced process's own probes on them.
    pub fn exec(&mut self, ebpf: &mut Ebpf, pid: u32, traced: bool) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        if self.per_process {
            if traced {
                self.search_root(ebpf, &root, Some(pid));
            }
            return;
        }
        let Ok(m) = std::fs::metadata(&root) else { return };
        if self.roots.insert((m.dev(), m.ino())) {
            self.search_root(ebpf, &root, None);
        }
    }

    /// A process the agent traces showed up: the libssl files it maps now (and, per process,
    /// those of its root's library directories, which it may map later).
    pub fn mapped(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let only = self.per_process.then_some(pid);
        if only.is_some() {
            self.search_root(ebpf, &PathBuf::from(format!("/proc/{pid}/root")), only);
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return };
        for path in libssl_in_maps(&text) {
            self.probe(ebpf, &PathBuf::from(format!("/proc/{pid}/root{path}")), only);
        }
    }

    /// A process exited: its own probes go (on a thread of their own: detaching waits).
    pub fn exited(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if !self.per_process {
            return;
        }
        let keys: Vec<_> = self.files.keys().filter(|(_, p)| *p == Some(pid)).copied().collect();
        let mut owned = Vec::new();
        for k in keys {
            if let Some(links) = self.files.remove(&k) {
                owned.extend(take_links(ebpf, links));
            }
        }
        if !owned.is_empty() {
            let _ = std::thread::Builder::new().name("ssl-detach".into()).spawn(move || drop(owned));
        }
    }

    fn search_root(&mut self, ebpf: &mut Ebpf, root: &Path, only: Option<u32>) {
        for dir in LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else { continue };
            for e in entries.flatten() {
                if e.file_name().to_str().is_some_and(is_libssl) {
                    self.probe(ebpf, &e.path(), only);
                }
            }
        }
    }

    /// Probes the file at `path` (for process `only`, or for every process) unless it was
    /// already (or cannot be).
    fn probe(&mut self, ebpf: &mut Ebpf, path: &Path, only: Option<u32>) {
        // `metadata` follows the `libssl.so.3` → `libssl.so.3.0.x` links: one file, one set.
        let Ok(m) = std::fs::metadata(path) else { return };
        let id = (m.dev(), m.ino());
        if self.files.contains_key(&(id, only)) || self.refused.contains(&id) {
            return;
        }
        let scope = match only.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        if self.loaded.as_ref().is_some_and(Result::is_err) {
            return;
        }
        if let Err(e) = self.load(ebpf) {
            warn!("TLS plaintext (OpenSSL) not traced: {e}");
            return;
        }
        match attach_file(ebpf, path, scope) {
            Ok(links) => {
                match only {
                    Some(pid) => info!("pid {pid}: OpenSSL probes attached to {} (TLS plaintext)", path.display()),
                    None => info!("{}: OpenSSL probes attached (TLS plaintext)", path.display()),
                }
                self.files.insert((id, only), links);
            }
            Err((links, e)) => {
                warn!("{}: OpenSSL probes not attached: {e}", path.display());
                drop(take_links(ebpf, links));
                self.refused.insert(id);
            }
        }
    }

    /// Loads the programs and puts `ssl_emit_step` in its tail-call slot, once.
    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        self.loaded.get_or_insert_with(|| load_programs(ebpf)).clone()
    }

    /// Detaches every file's probes (at stop), in parallel.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let mut owned = Vec::new();
        for (_, links) in self.files.drain() {
            owned.extend(take_links(ebpf, links));
        }
        std::thread::scope(|s| {
            for link in owned {
                // Without a thread the closure, and with it the link, is dropped (detached) here.
                let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(link));
            }
        });
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("{name} missing from the object"))
        .and_then(|p| <&mut UProbe>::try_from(p).map_err(|e| format!("{name}: {e}")))
}

/// Loads (verifies) OpenSSL's programs and puts `ssl_emit_step` in its tail-call slot.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), String> {
    let returns = [programs::SSL_RET, programs::SSL_HANDSHAKE_RET, programs::SSL_EMIT_STEP];
    for name in ENTRIES.iter().map(|(p, _)| *p).chain(returns) {
        uprobe(ebpf, name)?.load().map_err(|e| format!("loading {name}: {e:#}"))?;
    }
    let fd = uprobe(ebpf, programs::SSL_EMIT_STEP)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
        .map_err(|e| format!("{}: {e}", programs::SSL_EMIT_STEP))?;
    let mut progs: ProgramArray<_> = ebpf
        .map_mut(maps::SSL_PROGS)
        .ok_or_else(|| format!("map {} missing", maps::SSL_PROGS))?
        .try_into()
        .map_err(|e| format!("map {}: {e}", maps::SSL_PROGS))?;
    progs.set(0, &fd, 0).map_err(|e| format!("map {}: {e}", maps::SSL_PROGS))
}

/// Attaches the eleven probes to the file; on failure, the links attached so far and why.
fn attach_file(ebpf: &mut Ebpf, path: &Path, scope: UProbeScope) -> Result<Links, (Links, String)> {
    let mut links = Vec::new();
    let points = ENTRIES.iter().chain(RETURNS.iter()).copied();
    for (prog, func) in points {
        let r = uprobe(ebpf, prog).and_then(|p| p.attach([func], path, scope).map_err(|e| format!("{func}: {e:#}")));
        match r {
            Ok(link) => links.push((prog, link)),
            Err(e) => return Err((links, e)),
        }
    }
    Ok(links)
}

/// The links, taken out of their programs (dropping one detaches it).
fn take_links(ebpf: &mut Ebpf, links: Links) -> Vec<UProbeLink> {
    let mut owned = Vec::with_capacity(links.len());
    for (prog, link) in links {
        if let Ok(p) = uprobe(ebpf, prog)
            && let Ok(l) = p.take_link(link)
        {
            owned.push(l);
        }
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_names() {
        for n in ["libssl.so", "libssl.so.3", "libssl.so.1.1", "libssl.so.3.0.15"] {
            assert!(is_libssl(n), "{n}");
        }
        for n in ["libssl.so.", "libssl3.so", "libcrypto.so.3", "libssl.a", "libssl"] {
            assert!(!is_libssl(n), "{n}");
        }
    }

    #[test]
    fn libssl_from_maps() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00001000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000005000-7f0000006000 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f0000007000-7f0000008000 r-xp 00000000 00:00 0 [vdso]
7f0000009000-7f000000a000 r-xp 00000000 08:01 77 /opt/app/lib/libssl.so.1.1 (deleted)
7f000000b000-7f000000c000 rw-p 00000000 00:00 0
";
        assert_eq!(
            libssl_in_maps(maps),
            ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/opt/app/lib/libssl.so.1.1"],
            "executable mappings of libssl only, each once"
        );
    }
}
