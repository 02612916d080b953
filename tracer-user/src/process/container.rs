//! Container identity of a process, from its cgroup path (`/proc/PID/cgroup`).
//!
//! Container runtimes put each container in a cgroup whose last path component carries the
//! container's 64-hex-digit id; the layouts differ by runtime and cgroup driver:
//!
//! | runtime, driver | path (the id is `<id>`) |
//! | --- | --- |
//! | Docker, cgroupfs (v1) | `/docker/<id>` |
//! | Docker, systemd (v2) | `/system.slice/docker-<id>.scope` |
//! | Kubernetes + containerd, cgroupfs | `/kubepods/burstable/pod<uid>/<id>` |
//! | Kubernetes + containerd, systemd | `/kubepods.slice/…/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | containerd, systemd driver on cgroup v1 (legacy form) | `…/kubepods-besteffort-pod<uid_>.slice:cri-containerd:<id>` |
//! | Kubernetes + CRI-O, systemd | `…/kubepods-burstable-pod<uid_>.slice/crio-<id>.scope` |
//! | Kubernetes + Docker, systemd | `…/kubepods-burstable-pod<uid_>.slice/docker-<id>.scope` |
//! | Podman | `…/libpod-<id>.scope` |
//!
//! CRI-O's monitor (`crio-conmon-<id>.scope`) is not the container and is skipped. On cgroup v1
//! every hierarchy line names the same cgroup; the unified (`0::`) line is used first, then the
//! others. A process whose cgroup names no id (a host process, or a container whose cgroup
//! namespace hides the path, `0::/`) has no container id.

use std::path::Path;

/// A container's identity as read from its cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerId {
    /// The 64 lower-case hex digits of the id.
    pub id: String,
    /// The Kubernetes pod uid, when the cgroup path names one (`pod<uid>`).
    pub pod_uid: Option<String>,
}

/// Reads `/proc/PID/cgroup` under `proc_root`.
pub fn of_pid(proc_root: &Path, pid: u32) -> Option<ContainerId> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    from_cgroup_file(&text)
}

/// Parses the text of a `/proc/PID/cgroup` file (`hierarchy-id:controllers:path` lines).
pub fn from_cgroup_file(text: &str) -> Option<ContainerId> {
    let lines: Vec<(bool, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (hierarchy, _controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((hierarchy == "0", path))
        })
        .collect();
    let unified = lines.iter().filter(|(u, _)| *u);
    let legacy = lines.iter().filter(|(u, _)| !*u);
    unified.chain(legacy).find_map(|(_, path)| from_cgroup_path(path))
}

/// Extracts the container id (and pod uid) from one cgroup path.
pub fn from_cgroup_path(path: &str) -> Option<ContainerId> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // The container is the innermost component naming an id (a container running systemd has
    // `…/docker-<id>.scope/init.scope`).
    let (index, id) = components.iter().enumerate().rev().find_map(|(i, c)| id_in_component(c).map(|id| (i, id)))?;
    let pod_uid = components[..=index].iter().rev().find_map(|c| pod_uid_in_component(c));
    Some(ContainerId { id, pod_uid })
}

fn id_in_component(component: &str) -> Option<String> {
    // Legacy systemd form on cgroup v1: `<slice>:<prefix>:<id>`.
    let last = component.rsplit(':').next().unwrap_or(component);
    let name = last.strip_suffix(".scope").unwrap_or(last);
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = name.rsplit('-').next().unwrap_or(name);
    is_container_id(id).then(|| id.to_ascii_lowercase())
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_uid_in_component(component: &str) -> Option<String> {
    let c = component.split(':').next().unwrap_or(component);
    let c = c.strip_suffix(".slice").unwrap_or(c);
    let at = c.rfind("pod")?;
    let uid = c[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(
            |(i, b)| {
                if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() }
            },
        );
    // Static pods' uids are 32 hex digits without dashes.
    let ok_static = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    (ok || ok_static).then_some(uid)
}

/// A container id as written in a pod's status (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`): the id alone.
pub fn strip_runtime_prefix(status_id: &str) -> &str {
    status_id.split_once("://").map_or(status_id, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real /proc/PID/cgroup contents and cgroup paths, as reported by users of each runtime in
    // public issue threads (the source of each is named).

    /// Docker on cgroup v1 (cgroupfs driver); ctrsploit issue #280.
    const DOCKER_V1: &str =
        "12:net_cls,net_prio:/docker/2403ccfe427f1dc7b6120dccb9ac58c2f8456950380d587a9f33ea7f00dd303d
11:freezer:/docker/2403ccfe427f1dc7b6120dccb9ac58c2f8456950380d587a9f33ea7f00dd303d
10:rdma:/
9:blkio:/docker/2403ccfe427f1dc7b6120dccb9ac58c2f8456950380d587a9f33ea7f00dd303d
8:memory:/docker/2403ccfe427f1dc7b6120dccb9ac58c2f8456950380d587a9f33ea7f00dd303d
1:name=systemd:/docker/2403ccfe427f1dc7b6120dccb9ac58c2f8456950380d587a9f33ea7f00dd303d
0::/system.slice/containerd.service
";

    /// containerd with the systemd driver on cgroup v1, legacy `slice:prefix:id` form;
    /// opentelemetry-java issue #4507.
    const CONTAINERD_SYSTEMD_V1: &str = "11:perf_event:/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459
10:blkio:/system.slice/containerd.service/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459
";

    /// CRI-O with the systemd driver on cgroup v1; runc issue #4620.
    const CRIO_V1: &str = "13:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope
12:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope
11:files:/
";

    /// Kubernetes on Docker with the systemd driver, cgroup v1; lxc issue #3890.
    const K8S_DOCKER_SYSTEMD_V1: &str = "12:rdma:/
11:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4424e6_bb13_42f4_a47a_45a4828bf54d.slice/docker-d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98.scope
10:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4424e6_bb13_42f4_a47a_45a4828bf54d.slice/docker-d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98.scope
";

    #[test]
    fn docker_cgroup_v1() {
        let c = from_cgroup_file(DOCKER_V1).unwrap();
        assert_eq!(c.id, "2403ccfe427f1dc7b6120dccb9ac58c2f8456950380d587a9f33ea7f00dd303d");
        assert_eq!(c.pod_uid, None);
    }

    #[test]
    fn containerd_systemd_legacy_form() {
        let c = from_cgroup_file(CONTAINERD_SYSTEMD_V1).unwrap();
        assert_eq!(c.id, "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459");
        assert_eq!(c.pod_uid.as_deref(), Some("0125ec2f-b64a-4868-8f5b-94b56cbab864"));
    }

    #[test]
    fn crio_systemd() {
        let c = from_cgroup_file(CRIO_V1).unwrap();
        assert_eq!(c.id, "5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c");
        assert_eq!(c.pod_uid.as_deref(), Some("a5c1f8d5-1919-434d-add7-4afaafdaef89"));
    }

    #[test]
    fn kubernetes_docker_systemd() {
        let c = from_cgroup_file(K8S_DOCKER_SYSTEMD_V1).unwrap();
        assert_eq!(c.id, "d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98");
        assert_eq!(c.pod_uid.as_deref(), Some("7d4424e6-bb13-42f4-a47a-45a4828bf54d"));
    }

    #[test]
    fn cgroup_v2_paths() {
        // containerd + systemd driver on cgroup v2 (kind; containerd/nri pull request #227).
        let c = from_cgroup_file("0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1e597579_417e_482f_bf65_5fe170c3aebd.slice/cri-containerd-a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e.scope\n").unwrap();
        assert_eq!(c.id, "a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e");
        assert_eq!(c.pod_uid.as_deref(), Some("1e597579-417e-482f-bf65-5fe170c3aebd"));
        // containerd + cgroupfs driver (kubepods/<qos>/pod<uid>/<id>); netdata issue #4868 ids.
        let c = from_cgroup_path("/kubepods/burstable/pod03f3f104-3215-44f2-9686-d4dd1f05a7ed/09d185410c4e25236cc24717f881589bb0978b24eafd101624e627a4dd8d3439").unwrap();
        assert_eq!(c.id, "09d185410c4e25236cc24717f881589bb0978b24eafd101624e627a4dd8d3439");
        assert_eq!(c.pod_uid.as_deref(), Some("03f3f104-3215-44f2-9686-d4dd1f05a7ed"));
        // Static pod: 32-hex uid (netdata issue #4868).
        let c = from_cgroup_path("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod187bff14cccb94f179e943eacce55bb3.slice/cri-containerd-c203a2647ef1ad78e990157c50331f3b6ef0b03336cf08535d6bf7faa5421415.scope").unwrap();
        assert_eq!(c.pod_uid.as_deref(), Some("187bff14cccb94f179e943eacce55bb3"));
        // Docker on cgroup v2 (systemd driver), with systemd running inside the container.
        let c = from_cgroup_file("0::/system.slice/docker-1ebedb637aea644ece9c9eb3f93f41cbe6e5a96ce3961f665b83bd12363ab303.scope/init.scope\n").unwrap();
        assert_eq!(c.id, "1ebedb637aea644ece9c9eb3f93f41cbe6e5a96ce3961f665b83bd12363ab303");
        // Podman.
        let c = from_cgroup_path("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-80b574f32ccc79d236fbf8ef96354da4c533bd619b717661bb4568433f79d300.scope").unwrap();
        assert_eq!(c.id, "80b574f32ccc79d236fbf8ef96354da4c533bd619b717661bb4568433f79d300");
    }

    #[test]
    fn no_container() {
        // A cgroup namespace hides the path (Docker on cgroup v2; caddy-docker-proxy issue #207).
        assert_eq!(from_cgroup_file("0::/\n"), None);
        // Host processes: a systemd service, a login session, and a 32-hex-digit cgroup name
        // that is not a container (this project's CI machine).
        assert_eq!(from_cgroup_file("0::/system.slice/containerd.service\n"), None);
        assert_eq!(from_cgroup_file("0::/user.slice/user-0.slice/session-3.scope\n"), None);
        assert_eq!(from_cgroup_file("4:memory:/process_api/647335a46bf0d26a23972806df043cdb\n0::/\n"), None);
        // CRI-O's monitor process is not the container (microshift pull request #697).
        assert_eq!(
            from_cgroup_path(
                "/system.slice/crio-conmon-e0c85fe7644a858988d9687c2e0736a7d31922740d0f3e001c6b2e0aa7e5f528.scope"
            ),
            None
        );
        assert_eq!(from_cgroup_file(""), None);
        assert_eq!(from_cgroup_file("garbage"), None);
    }

    #[test]
    fn status_ids() {
        assert_eq!(strip_runtime_prefix("containerd://abc"), "abc");
        assert_eq!(strip_runtime_prefix("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_prefix("abc"), "abc");
    }

    #[test]
    fn own_process_reads() {
        // Whatever this machine is, reading our own cgroup must not fail or panic.
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(of_pid(Path::new("/proc"), std::process::id()), from_cgroup_file(&text));
    }
}
