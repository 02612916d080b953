//! Which processes to trace: selectors by pid, executable glob and listening port.

use globset::{Glob, GlobMatcher};
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("--exe {pattern:?} is not a valid glob: {source}")]
    Glob { pattern: String, #[source] source: globset::Error },
}

/// The user's selection. Empty means every process but the agent.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub pids: HashSet<u32>,
    exes: Vec<(String, GlobMatcher)>,
    pub ports: HashSet<u16>,
}

impl Selector {
    pub fn new(pids: &[u32], exes: &[String], ports: &[u16]) -> Result<Self, SelectorError> {
        let exes = exes
            .iter()
            .map(|p| {
                Glob::new(p)
                    .map(|g| (p.clone(), g.compile_matcher()))
                    .map_err(|source| SelectorError::Glob { pattern: p.clone(), source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { pids: pids.iter().copied().collect(), exes, ports: ports.iter().copied().collect() })
    }

    /// No selector given: trace everything.
    pub fn is_all(&self) -> bool {
        self.pids.is_empty() && self.exes.is_empty() && self.ports.is_empty()
    }

    /// Whether an executable path matches a `--exe` glob, on its full path or its file name.
    pub fn exe_matches(&self, exe: &Path) -> bool {
        let name = exe.file_name().map(Path::new);
        self.exes.iter().any(|(_, m)| m.is_match(exe) || name.is_some_and(|n| m.is_match(n)))
    }

    /// Whether a process matches by pid or executable (ports are checked separately).
    pub fn matches_process(&self, pid: u32, exe: Option<&Path>, cmdline: &[String]) -> bool {
        if self.pids.contains(&pid) {
            return true;
        }
        if let Some(exe) = exe {
            if self.exe_matches(exe) {
                return true;
            }
        }
        // Interpreted programs: also match the script named on the command line (`python3 app.py`).
        cmdline.iter().skip(1).take(2).any(|a| !a.starts_with('-') && self.exe_matches(Path::new(a)))
    }
}

/// Inodes of TCP sockets listening on one of `ports`, from /proc/net/tcp and tcp6.
pub fn listening_inodes(proc_root: &Path, ports: &HashSet<u16>) -> HashSet<u64> {
    let mut out = HashSet::new();
    for f in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc_root.join(f)) {
            out.extend(parse_listening(&text, ports));
        }
    }
    out
}

/// Parses the text of /proc/net/tcp{,6}: inodes of LISTEN (state 0A) sockets on `ports`.
pub fn parse_listening(text: &str, ports: &HashSet<u16>) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let state = cols.get(3)?;
            let inode = cols.get(9)?.parse::<u64>().ok()?;
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (*state == "0A" && ports.contains(&port)).then_some(inode)
        })
        .collect()
}

/// Pids that hold one of the socket `inodes` open.
pub fn pids_with_sockets(proc_root: &Path, inodes: &HashSet<u64>) -> HashSet<u32> {
    let mut out = HashSet::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(dir) = std::fs::read_dir(proc_root) else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(ino) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if ino.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) {
                        out.insert(pid);
                        break;
                    }
                }
            }
        }
    }
    out
}

/// Every pid currently in /proc.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    std::fs::read_dir(proc_root)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_globs_match_path_or_name() {
        let s = Selector::new(&[], &["python3*".into(), "/opt/**/server".into()], &[]).unwrap();
        assert!(s.exe_matches(Path::new("/usr/bin/python3.11")));
        assert!(s.exe_matches(Path::new("/opt/app/bin/server")));
        assert!(!s.exe_matches(Path::new("/usr/bin/node")));
        assert!(s.matches_process(1, Some(Path::new("/usr/bin/python3.11")), &[]));
        let s = Selector::new(&[], &["app.py".into()], &[]).unwrap();
        assert!(s.matches_process(1, Some(Path::new("/usr/bin/python3")), &["python3".into(), "/srv/app.py".into()]));
    }

    #[test]
    fn bad_glob_is_named() {
        let e = Selector::new(&[], &["[".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("\"[\""), "{e}");
    }

    #[test]
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 100 0 0 10 0\n";
        let ports: HashSet<u16> = [8080].into();
        assert_eq!(parse_listening(text, &ports), vec![12345]);
        assert!(parse_listening(text, &[9090].into()).is_empty());
        assert!(parse_listening("garbage\nmore garbage", &ports).is_empty());
    }
}
