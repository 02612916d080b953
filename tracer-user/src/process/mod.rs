//! Identity of traced processes, read from /proc: the span resource.
//!
//! `service.name` comes from `OTEL_SERVICE_NAME` in the process's environment, then from
//! `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`, else from its executable's file name.

pub mod container;
pub mod k8s;

use crate::model::ProcessResource;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Whether an executable is a Go program (it has Go's build-info or pcln sections).
pub fn is_go_binary(path: &Path) -> bool {
    use object::{Object as _, ObjectSection as _};
    // Reads only the headers it needs: executables can be hundreds of megabytes.
    let Ok(f) = std::fs::File::open(path) else { return false };
    let cache = object::read::ReadCache::new(f);
    let Ok(file) = object::File::parse(&cache) else { return false };
    file.sections().any(|s| matches!(s.name(), Ok(".go.buildinfo" | ".gopclntab" | ".note.go.buildid")))
}

/// What /proc tells about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub exe: Option<PathBuf>,
    pub cmdline: Vec<String>,
    pub env_service_name: Option<String>,
    pub env_resource_attributes: Vec<(String, String)>,
    /// The container the process runs in, from its cgroup.
    pub container: Option<crate::process::container::ContainerId>,
    /// The name the kernel gave at exec (`comm`), for a process that was gone before /proc
    /// could be read.
    pub comm: Option<String>,
}

impl ProcInfo {
    /// The executable's file name (or the first word of the command line).
    pub fn exe_name(&self) -> String {
        self.exe
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                self.cmdline
                    .first()
                    .map(|c| Path::new(c).file_name().map_or(c.clone(), |n| n.to_string_lossy().into_owned()))
            })
            .or_else(|| self.comm.clone())
            .unwrap_or_else(|| format!("pid-{}", self.pid))
    }
}

/// Reads a process's details. A process that exited yields what could still be read.
pub fn read_proc(proc_root: &Path, pid: u32) -> ProcInfo {
    let dir = proc_root.join(pid.to_string());
    let exe = std::fs::read_link(dir.join("exe")).ok().map(|p| {
        // A replaced binary reads as "/path (deleted)".
        let s = p.to_string_lossy();
        PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s))
    });
    let cmdline = std::fs::read(dir.join("cmdline")).map(|b| split_nul(&b)).unwrap_or_default();
    let environ = std::fs::read(dir.join("environ")).map(|b| split_nul(&b)).unwrap_or_default();
    let (env_service_name, env_resource_attributes) = service_from_env(&environ);
    let container = crate::process::container::of_pid(proc_root, pid);
    ProcInfo { pid, exe, cmdline, env_service_name, env_resource_attributes, container, comm: None }
}

fn split_nul(b: &[u8]) -> Vec<String> {
    b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// `OTEL_SERVICE_NAME` and the parsed `OTEL_RESOURCE_ATTRIBUTES` from an environment block.
pub fn service_from_env(environ: &[String]) -> (Option<String>, Vec<(String, String)>) {
    let mut name = None;
    let mut attrs = Vec::new();
    for kv in environ {
        if let Some(v) = kv.strip_prefix("OTEL_SERVICE_NAME=") {
            if !v.trim().is_empty() {
                name = Some(v.trim().to_owned());
            }
        } else if let Some(v) = kv.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
            attrs = parse_resource_attributes(v);
        }
    }
    (name, attrs)
}

/// Parses `k1=v1,k2=v2` with percent-encoded values, skipping malformed pairs.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's name (`host.name`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Builds the span resource of a process.
pub fn resource_of(info: &ProcInfo, host: &str) -> ProcessResource {
    resource_with_pod(info, host, None)
}

/// Builds the span resource of a process, with its pod's metadata when it runs in one. The
/// process's own `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` name the service first, then
/// the pod ([`crate::process::k8s::PodIdentity::service_name`]), then the executable.
pub fn resource_with_pod(
    info: &ProcInfo,
    host: &str,
    pod: Option<&crate::process::k8s::PodIdentity>,
) -> ProcessResource {
    let service_name = info
        .env_service_name
        .clone()
        .or_else(|| info.env_resource_attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
        .or_else(|| pod.and_then(|p| p.service_name.clone()))
        .unwrap_or_else(|| info.exe_name());
    let mut attributes: Vec<(String, String)> =
        info.env_resource_attributes.iter().filter(|(k, _)| k != "service.name").cloned().collect();
    attributes.push(("process.pid".into(), info.pid.to_string()));
    attributes.push(("process.executable.name".into(), info.exe_name()));
    if let Some(exe) = &info.exe {
        attributes.push(("process.executable.path".into(), exe.to_string_lossy().into_owned()));
    }
    if !host.is_empty() {
        attributes.push(("host.name".into(), host.to_owned()));
    }
    if let Some(c) = &info.container {
        attributes.push(("container.id".into(), c.id.clone()));
    }
    if let Some(pod) = pod {
        for (k, v) in &pod.attributes {
            if !attributes.iter().any(|(have, _)| have == k) {
                attributes.push((k.clone(), v.clone()));
            }
        }
    }
    attributes.push(("telemetry.distro.name".into(), "tracer".into()));
    attributes.push(("telemetry.distro.version".into(), env!("CARGO_PKG_VERSION").into()));
    ProcessResource { pid: info.pid, service_name, attributes }
}

/// Processes a [`ProcessCache`] holds at most (the kernel's `TRACED` map holds as many).
pub const MAX_PROCESSES: usize = 16_384;

/// Cache of resources by pid, filled while the process is alive (on its first event). Bounded:
/// beyond its limit, processes that are gone from /proc are evicted first, else any one (it is
/// read again on its next event); evictions are counted.
pub struct ProcessCache {
    proc_root: PathBuf,
    host: String,
    by_pid: HashMap<u32, Arc<ProcessResource>>,
    max: usize,
    evictions: u64,
    k8s: Option<crate::process::k8s::Cache>,
    /// Processes in a container whose pod was not known when they were read: looked up again.
    awaiting_pod: HashMap<u32, (ProcInfo, Instant)>,
}

/// How long a process's resource is completed once its pod appears.
const POD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl ProcessCache {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self::with_limit(proc_root, MAX_PROCESSES)
    }

    /// A cache of at most `max` (at least 1) processes.
    pub fn with_limit(proc_root: impl Into<PathBuf>, max: usize) -> Self {
        Self {
            proc_root: proc_root.into(),
            host: host_name(),
            by_pid: HashMap::new(),
            max: max.max(1),
            evictions: 0,
            k8s: None,
            awaiting_pod: HashMap::new(),
        }
    }

    /// Adds Kubernetes metadata to the resources of processes in pods.
    pub fn set_kubernetes(&mut self, cache: crate::process::k8s::Cache) {
        self.k8s = Some(cache);
    }

    /// The Kubernetes cache, when metadata is on.
    pub fn kubernetes(&self) -> Option<&crate::process::k8s::Cache> {
        self.k8s.as_ref()
    }

    fn build(&mut self, info: ProcInfo) -> Arc<ProcessResource> {
        let pod = match (&self.k8s, &info.container) {
            (Some(k8s), Some(c)) => {
                let pod = k8s.lookup(c);
                if pod.is_none() {
                    self.awaiting_pod.entry(info.pid).or_insert_with(|| (info.clone(), Instant::now()));
                } else {
                    self.awaiting_pod.remove(&info.pid);
                }
                pod
            }
            _ => None,
        };
        Arc::new(resource_with_pod(&info, &self.host, pod.as_ref()))
    }

    pub fn get(&mut self, pid: u32) -> Arc<ProcessResource> {
        self.get_named(pid, None)
    }

    /// [`ProcessCache::get`]; `comm` (the name the kernel gave the program at exec) names the
    /// process if it is gone from /proc before it is read.
    pub fn get_named(&mut self, pid: u32, comm: Option<&str>) -> Arc<ProcessResource> {
        if let Some((info, since)) = self.awaiting_pod.get(&pid) {
            if since.elapsed() > POD_WAIT {
                self.awaiting_pod.remove(&pid);
            } else {
                let info = info.clone();
                let r = self.build(info);
                self.by_pid.insert(pid, r.clone());
                return r;
            }
        }
        if let Some(r) = self.by_pid.get(&pid) {
            return r.clone();
        }
        if self.by_pid.len() >= self.max {
            self.make_room();
        }
        let mut info = read_proc(&self.proc_root, pid);
        if info.exe.is_none() && info.cmdline.is_empty() {
            info.comm = comm.filter(|c| !c.is_empty()).map(str::to_owned);
        }
        let r = self.build(info);
        self.by_pid.insert(pid, r.clone());
        r
    }

    /// Evicts the processes that have exited (their exit event was lost), or else one entry.
    fn make_room(&mut self) {
        let before = self.by_pid.len();
        let root = &self.proc_root;
        self.by_pid.retain(|pid, _| root.join(pid.to_string()).exists());
        self.awaiting_pod.retain(|pid, _| root.join(pid.to_string()).exists());
        if self.by_pid.len() >= self.max
            && let Some(&victim) = self.by_pid.keys().next()
        {
            self.by_pid.remove(&victim);
        }
        self.evictions += (before - self.by_pid.len()) as u64;
    }

    /// Entries evicted to stay within the limit.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Re-reads a process after exec.
    pub fn refresh(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
        self.awaiting_pod.remove(&pid);
    }

    /// Forgets a process that exited.
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
        self.awaiting_pod.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_precedence() {
        let env = vec![
            "PATH=/bin".to_string(),
            "OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs,deployment.environment=prod%20eu".into(),
        ];
        let (n, a) = service_from_env(&env);
        assert_eq!(n, None);
        let info = ProcInfo {
            pid: 9,
            exe: Some("/usr/bin/python3.11".into()),
            env_service_name: n,
            env_resource_attributes: a,
            ..Default::default()
        };
        let r = resource_of(&info, "h");
        assert_eq!(r.service_name, "from-attrs");
        assert!(r.attributes.contains(&("deployment.environment".into(), "prod eu".into())));
        let mut env2 = env.clone();
        env2.push("OTEL_SERVICE_NAME=checkout".into());
        let (n, a) = service_from_env(&env2);
        let info = ProcInfo { env_service_name: n, env_resource_attributes: a, ..info };
        assert_eq!(resource_of(&info, "h").service_name, "checkout");
        let info = ProcInfo { env_service_name: None, env_resource_attributes: vec![], ..info };
        assert_eq!(resource_of(&info, "h").service_name, "python3.11");
        // Gone before /proc was read: the name the kernel gave it at exec, else its pid.
        let gone = ProcInfo { pid: 9, comm: Some("curl".into()), ..Default::default() };
        assert_eq!(resource_of(&gone, "h").service_name, "curl");
        assert_eq!(resource_of(&ProcInfo { pid: 9, ..Default::default() }, "h").service_name, "pid-9");
    }

    #[test]
    fn container_and_pod_attributes() {
        let info = ProcInfo {
            pid: 7,
            exe: Some("/app/server".into()),
            container: crate::process::container::from_cgroup_path(
                "/system.slice/docker-1ebedb637aea644ece9c9eb3f93f41cbe6e5a96ce3961f665b83bd12363ab303.scope",
            ),
            ..Default::default()
        };
        let r = resource_of(&info, "h");
        assert!(r.attributes.contains(&(
            "container.id".into(),
            "1ebedb637aea644ece9c9eb3f93f41cbe6e5a96ce3961f665b83bd12363ab303".into()
        )));
        assert_eq!(r.service_name, "server");
        let pod = crate::process::k8s::PodIdentity {
            attributes: vec![("k8s.pod.name".into(), "api-1".into()), ("host.name".into(), "ignored".into())],
            service_name: Some("api".into()),
            ..Default::default()
        };
        let r = resource_with_pod(&info, "h", Some(&pod));
        assert_eq!(r.service_name, "api");
        assert!(r.attributes.contains(&("k8s.pod.name".into(), "api-1".into())));
        assert!(r.attributes.contains(&("host.name".into(), "h".into())), "the process's own attributes win");
        assert!(!r.attributes.contains(&("host.name".into(), "ignored".into())));
        // The process's own environment names the service before the pod does.
        let info = ProcInfo { env_service_name: Some("checkout".into()), ..info };
        assert_eq!(resource_with_pod(&info, "h", Some(&pod)).service_name, "checkout");
    }

    #[test]
    fn cache_is_bounded_and_evicts_exited_processes_first() {
        let root = std::env::temp_dir().join(format!("tracer-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for pid in [1, 2] {
            std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
        }
        let mut cache = ProcessCache::with_limit(&root, 3);
        for pid in [1, 2, 3] {
            cache.get(pid);
        }
        assert_eq!((cache.len(), cache.evictions()), (3, 0));
        // Full: pid 3 has no /proc entry (it exited unseen), so it goes first.
        cache.get(4);
        assert_eq!((cache.len(), cache.evictions()), (3, 1));
        assert!(cache.contains(1) && cache.contains(2) && !cache.contains(3) && cache.contains(4));
        // Full of live processes (pid 4 is gone too): stays within the limit.
        std::fs::create_dir_all(root.join("4")).unwrap();
        cache.get(5);
        assert_eq!((cache.len(), cache.evictions()), (3, 2));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn malformed_attributes_are_skipped() {
        assert_eq!(
            parse_resource_attributes("a=1,,=x,noeq,b=%zz,c=%41"),
            vec![("a".into(), "1".into()), ("b".into(), "%zz".into()), ("c".into(), "A".into())]
        );
    }

    #[test]
    fn tells_go_binaries() {
        // The test binary itself is Rust; /bin/sh is C. A Go binary is checked end to end.
        assert!(!is_go_binary(&std::env::current_exe().unwrap()));
        assert!(!is_go_binary(Path::new("/bin/sh")));
        assert!(!is_go_binary(Path::new("/nonexistent")));
    }

    #[test]
    fn reads_own_process() {
        let info = read_proc(Path::new("/proc"), std::process::id());
        assert!(info.exe.is_some());
        assert!(!info.cmdline.is_empty());
    }
}
