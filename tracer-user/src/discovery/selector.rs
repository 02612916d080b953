//! Which processes to trace: selectors by pid, executable glob, listening port, container and
//! Kubernetes namespace, pod name and labels; exclusions by executable glob, namespace and the
//! agent's own container.
//!
//! A process is traced when no exclusion applies and it matches any include selector (or none is
//! given). The Kubernetes selectors combine like a Kubernetes selector: a pod must be in one of
//! the namespaces (if any is given), have a name matching one of the pod globs (if any) and carry
//! every label (if any); that group then counts as one include selector beside pid, executable,
//! port and container.

use crate::process::container::ContainerId;
use globset::{Glob, GlobMatcher};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("{option} {pattern:?} is not a valid glob: {source}")]
    Glob {
        option: &'static str,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("{option} {value:?} is not a container id (at least 12 hex digits)")]
    Container { option: &'static str, value: String },
}

/// Everything the user selected, as plain values (from flags, environment and file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorSpec {
    pub pids: Vec<u32>,
    pub exes: Vec<String>,
    pub ports: Vec<u16>,
    pub containers: Vec<String>,
    pub namespaces: Vec<String>,
    pub pods: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub exclude_exes: Vec<String>,
    pub exclude_namespaces: Vec<String>,
}

/// Namespaces excluded unless the user says otherwise: the cluster's own infrastructure.
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system"];

/// What is known of a process's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState<'a> {
    /// Not in a container, or Kubernetes metadata is off: no pod will ever be known.
    None,
    /// In a container whose pod the agent has not seen yet.
    Pending,
    Known(PodMeta<'a>),
}

/// The parts of a pod the selectors look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// A process as the selectors see it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub pid: u32,
    pub exe: Option<&'a Path>,
    pub cmdline: &'a [String],
    pub container: Option<&'a ContainerId>,
    pub pod: PodState<'a>,
    /// Selected by a listening port (found by the port scan).
    pub by_port: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Trace,
    Skip,
    /// The pod is not known yet; ask again later.
    Wait,
}

/// The user's selection, compiled. No include selector means every process but the excluded.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub pids: HashSet<u32>,
    exes: Vec<(String, GlobMatcher)>,
    pub ports: HashSet<u16>,
    containers: Vec<String>,
    namespaces: Vec<String>,
    pods: Vec<GlobMatcher>,
    labels: BTreeMap<String, String>,
    exclude_exes: Vec<GlobMatcher>,
    exclude_namespaces: Vec<String>,
    /// The agent's own container: never traced.
    own_container: Option<String>,
}

fn globs(option: &'static str, patterns: &[String]) -> Result<Vec<(String, GlobMatcher)>, SelectorError> {
    patterns
        .iter()
        .map(|p| {
            Glob::new(p).map(|g| (p.clone(), g.compile_matcher())).map_err(|source| SelectorError::Glob {
                option,
                pattern: p.clone(),
                source,
            })
        })
        .collect()
}

fn matches_exe(globs: &[(String, GlobMatcher)], exe: &Path) -> bool {
    let name = exe.file_name().map(Path::new);
    globs.iter().any(|(_, m)| m.is_match(exe) || name.is_some_and(|n| m.is_match(n)))
}

impl Selector {
    pub fn new(pids: &[u32], exes: &[String], ports: &[u16]) -> Result<Self, SelectorError> {
        Self::from_spec(&SelectorSpec {
            pids: pids.to_vec(),
            exes: exes.to_vec(),
            ports: ports.to_vec(),
            ..SelectorSpec::default()
        })
    }

    pub fn from_spec(spec: &SelectorSpec) -> Result<Self, SelectorError> {
        let containers = spec
            .containers
            .iter()
            .map(|c| {
                let id = crate::process::container::strip_runtime_prefix(c.trim()).to_ascii_lowercase();
                if id.len() >= 12 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(id)
                } else {
                    Err(SelectorError::Container { option: "--container", value: c.clone() })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pids: spec.pids.iter().copied().collect(),
            exes: globs("--exe", &spec.exes)?,
            ports: spec.ports.iter().copied().collect(),
            containers,
            namespaces: spec.namespaces.clone(),
            pods: globs("--pod", &spec.pods)?.into_iter().map(|(_, m)| m).collect(),
            labels: spec.labels.clone(),
            exclude_exes: globs("--exclude-exe", &spec.exclude_exes)?.into_iter().map(|(_, m)| m).collect(),
            exclude_namespaces: spec.exclude_namespaces.clone(),
            own_container: None,
        })
    }

    /// Never traces the processes of this container (the agent's own).
    pub fn exclude_own_container(&mut self, id: Option<String>) {
        self.own_container = id;
    }

    /// No include selector given: trace everything not excluded.
    pub fn is_all(&self) -> bool {
        self.pids.is_empty()
            && self.exes.is_empty()
            && self.ports.is_empty()
            && self.containers.is_empty()
            && !self.has_pod_selectors()
    }

    /// Any exclusion that needs a look at each process (so the kernel cannot trace all).
    pub fn has_exclusions(&self, kubernetes: bool) -> bool {
        !self.exclude_exes.is_empty()
            || self.own_container.is_some()
            || (kubernetes && !self.exclude_namespaces.is_empty())
    }

    /// Selectors that need Kubernetes metadata.
    pub fn has_pod_selectors(&self) -> bool {
        !self.namespaces.is_empty() || !self.pods.is_empty() || !self.labels.is_empty()
    }

    /// Whether an executable path matches a `--exe` glob, on its full path or its file name.
    pub fn exe_matches(&self, exe: &Path) -> bool {
        matches_exe(&self.exes, exe)
    }

    /// Whether a process matches by pid or executable (ports are checked separately).
    pub fn matches_process(&self, pid: u32, exe: Option<&Path>, cmdline: &[String]) -> bool {
        if self.pids.contains(&pid) {
            return true;
        }
        if let Some(exe) = exe
            && self.exe_matches(exe)
        {
            return true;
        }
        // Interpreted programs: also match the script named on the command line (`python3 app.py`).
        cmdline.iter().skip(1).take(2).any(|a| !a.starts_with('-') && self.exe_matches(Path::new(a)))
    }

    fn excluded_exe(&self, exe: Option<&Path>) -> bool {
        let Some(exe) = exe else { return false };
        let name = exe.file_name().map(Path::new);
        self.exclude_exes.iter().any(|m| m.is_match(exe) || name.is_some_and(|n| m.is_match(n)))
    }

    fn container_matches(&self, c: Option<&ContainerId>) -> bool {
        c.is_some_and(|c| self.containers.iter().any(|p| c.id.starts_with(p.as_str())))
    }

    fn pod_matches(&self, pod: &PodMeta<'_>) -> bool {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == pod.namespace))
            && (self.pods.is_empty() || self.pods.iter().any(|m| m.is_match(pod.name)))
            && self.labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }

    /// Whether to trace a process.
    pub fn decide(&self, c: &Candidate<'_>) -> Decision {
        if c.pid == std::process::id() || self.excluded_exe(c.exe) {
            return Decision::Skip;
        }
        if let (Some(own), Some(container)) = (&self.own_container, c.container)
            && *own == container.id
        {
            return Decision::Skip;
        }
        if !self.exclude_namespaces.is_empty() {
            match &c.pod {
                PodState::Known(p) if self.exclude_namespaces.iter().any(|n| n == p.namespace) => {
                    return Decision::Skip;
                }
                PodState::Pending => return Decision::Wait,
                _ => {}
            }
        }
        if self.is_all()
            || c.by_port
            || self.matches_process(c.pid, c.exe, c.cmdline)
            || self.container_matches(c.container)
        {
            return Decision::Trace;
        }
        if self.has_pod_selectors() {
            return match &c.pod {
                PodState::Known(p) if self.pod_matches(p) => Decision::Trace,
                PodState::Pending => Decision::Wait,
                _ => Decision::Skip,
            };
        }
        Decision::Skip
    }
}

/// Parses `key=value` pod label selectors.
pub fn parse_labels(option: &str, items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => return Err(format!("{option}[{i}]: {item:?} is not of the form key=value")),
        }
    }
    Ok(out)
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
                if let Some(ino) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                    && ino.parse::<u64>().is_ok_and(|i| inodes.contains(&i))
                {
                    out.insert(pid);
                    break;
                }
            }
        }
    }
    out
}

/// Every pid currently in /proc.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    std::fs::read_dir(proc_root)
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect())
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
        let e =
            Selector::from_spec(&SelectorSpec { containers: vec!["abc".into()], ..Default::default() }).unwrap_err();
        assert_eq!(e.to_string(), "--container \"abc\" is not a container id (at least 12 hex digits)");
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn cand<'a>(pid: u32, exe: &'a str, container: Option<&'a ContainerId>, pod: PodState<'a>) -> Candidate<'a> {
        Candidate { pid, exe: Some(Path::new(exe)), cmdline: &[], container, pod, by_port: false }
    }

    const ID: &str = "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459";

    #[test]
    fn namespace_pod_and_label_selectors() {
        let spec = SelectorSpec {
            namespaces: vec!["shop".into()],
            pods: vec!["checkout-*".into()],
            labels: labels(&[("tier", "web")]),
            ..Default::default()
        };
        let s = Selector::from_spec(&spec).unwrap();
        let c = ContainerId { id: ID.into(), pod_uid: None };
        let web = labels(&[("tier", "web"), ("app", "checkout")]);
        let db = labels(&[("tier", "db")]);
        let pod = |namespace, name, labels| PodState::Known(PodMeta { namespace, name, labels });
        assert_eq!(s.decide(&cand(10, "/app", Some(&c), pod("shop", "checkout-7d9f-abcde", &web))), Decision::Trace);
        // Every part must match: namespace, name glob, all labels.
        assert_eq!(s.decide(&cand(10, "/app", Some(&c), pod("other", "checkout-7d9f-abcde", &web))), Decision::Skip);
        assert_eq!(s.decide(&cand(10, "/app", Some(&c), pod("shop", "cart-1", &web))), Decision::Skip);
        assert_eq!(s.decide(&cand(10, "/app", Some(&c), pod("shop", "checkout-1", &db))), Decision::Skip);
        // Pod not known yet: wait; not in a pod at all: skip.
        assert_eq!(s.decide(&cand(10, "/app", Some(&c), PodState::Pending)), Decision::Wait);
        assert_eq!(s.decide(&cand(10, "/app", None, PodState::None)), Decision::Skip);
    }

    #[test]
    fn container_selector_by_prefix() {
        let s = Selector::from_spec(&SelectorSpec {
            containers: vec![format!("containerd://{}", &ID[..12])],
            ..Default::default()
        })
        .unwrap();
        let c = ContainerId { id: ID.into(), pod_uid: None };
        let other = ContainerId { id: "d".repeat(64), pod_uid: None };
        assert_eq!(s.decide(&cand(10, "/app", Some(&c), PodState::None)), Decision::Trace);
        assert_eq!(s.decide(&cand(10, "/app", Some(&other), PodState::None)), Decision::Skip);
        assert_eq!(s.decide(&cand(10, "/app", None, PodState::None)), Decision::Skip);
    }

    #[test]
    fn exclusions_win_over_selection() {
        let spec = SelectorSpec {
            exes: vec!["python3*".into()],
            exclude_exes: vec!["python3.9".into()],
            exclude_namespaces: vec!["kube-system".into()],
            ..Default::default()
        };
        let mut s = Selector::from_spec(&spec).unwrap();
        let c = ContainerId { id: ID.into(), pod_uid: None };
        let l = labels(&[]);
        let sys = PodState::Known(PodMeta { namespace: "kube-system", name: "coredns-1", labels: &l });
        let app = PodState::Known(PodMeta { namespace: "shop", name: "api-1", labels: &l });
        assert_eq!(s.decide(&cand(10, "/usr/bin/python3.11", None, PodState::None)), Decision::Trace);
        assert_eq!(s.decide(&cand(10, "/usr/bin/python3.9", None, PodState::None)), Decision::Skip);
        assert_eq!(s.decide(&cand(10, "/usr/bin/python3.11", Some(&c), sys)), Decision::Skip);
        assert_eq!(s.decide(&cand(10, "/usr/bin/python3.11", Some(&c), app.clone())), Decision::Trace);
        // A container whose pod is not known yet may be in an excluded namespace.
        assert_eq!(s.decide(&cand(10, "/usr/bin/python3.11", Some(&c), PodState::Pending)), Decision::Wait);
        // The agent's own container and the agent itself are never traced.
        s.exclude_own_container(Some(ID.into()));
        assert_eq!(s.decide(&cand(10, "/usr/bin/python3.11", Some(&c), app)), Decision::Skip);
        assert_eq!(s.decide(&cand(std::process::id(), "/usr/bin/python3.11", None, PodState::None)), Decision::Skip);
        // Excluding alone: everything else is traced, and the kernel must not trace all.
        let s = Selector::from_spec(&SelectorSpec { exclude_exes: vec!["sshd".into()], ..Default::default() }).unwrap();
        assert!(s.is_all() && s.has_exclusions(false));
        assert_eq!(s.decide(&cand(10, "/usr/sbin/sshd", None, PodState::None)), Decision::Skip);
        assert_eq!(s.decide(&cand(10, "/usr/bin/node", None, PodState::None)), Decision::Trace);
        // Namespace exclusions only matter with Kubernetes metadata.
        let s =
            Selector::from_spec(&SelectorSpec { exclude_namespaces: vec!["kube-system".into()], ..Default::default() })
                .unwrap();
        assert!(!s.has_exclusions(false) && s.has_exclusions(true));
    }

    #[test]
    fn label_parsing() {
        assert_eq!(
            parse_labels("--pod-label", &["app=web".into(), "tier = db".into()]).unwrap(),
            labels(&[("app", "web"), ("tier", "db")])
        );
        assert_eq!(
            parse_labels("--pod-label", &["app".into()]).unwrap_err(),
            "--pod-label[0]: \"app\" is not of the form key=value"
        );
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
