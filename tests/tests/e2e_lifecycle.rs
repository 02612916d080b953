//! Privileged end-to-end tests of the agent's lifecycle: after SIGINT, SIGTERM or SIGKILL none
//! of its programs, links or cgroup attachments remain (the sockops program on the cgroup v2
//! root is the one that could affect traffic), and two agents on one host coexist without
//! disturbing each other. The agent's kernel objects are found through the file descriptors of
//! its pid, so other agents running on the machine do not confuse the test.

use std::collections::BTreeSet;
use std::time::Duration;
use tracer_tests::harness::{
    Agent, Service, args, bpftool, curl, grpc_env, live_prog_ids, prog_ids_of, require_root, rt, summary, wait_until,
};
use tracer_tests::receiver::Receiver;

const WAIT: Duration = Duration::from_secs(30);

fn cgroup2_root() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| f[1].to_owned())
        .expect("a cgroup v2 mount")
}

/// (program id, attach type) of every program attached in the cgroup v2 hierarchy.
fn cgroup_attachments() -> Vec<(u64, String)> {
    let tree = bpftool(&["cgroup", "tree", &cgroup2_root()]);
    tree.as_array()
        .into_iter()
        .flatten()
        .flat_map(|cg| cg["programs"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| Some((p["id"].as_u64()?, p["attach_type"].as_str().unwrap_or("").to_owned())))
        .collect()
}

fn link_prog_ids() -> BTreeSet<u64> {
    bpftool(&["link", "show"]).as_array().into_iter().flatten().filter_map(|l| l["prog_id"].as_u64()).collect()
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn nothing_stays_attached_after_sigint_sigterm_or_sigkill() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let go = Service::go("go-lifecycle").expect("go server");
    for (sig, name) in [(2, "SIGINT"), (15, "SIGTERM"), (9, "SIGKILL")] {
        // Propagation `on` attaches the sockops program to the cgroup v2 root: the one program
        // that acts on every TCP connection of the host.
        let agent = Agent::start(&args(&["--pid", &go.pid().to_string(), "--propagation", "on"]), &grpc_env(&rx))
            .expect("agent");
        let ids = prog_ids_of(agent.pid);
        assert!(ids.len() >= 10, "{name}: the agent's programs are visible: {ids:?}");
        let sockops: Vec<u64> = cgroup_attachments()
            .into_iter()
            .filter(|(id, ty)| ids.contains(id) && ty.ends_with("sock_ops"))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(sockops.len(), 1, "{name}: one sockops attachment while running");
        assert!(link_prog_ids().iter().any(|id| ids.contains(id)), "{name}: the agent's links are visible");
        assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello");

        let (status, log) = agent.signal_and_wait(sig).expect("agent exits");
        if sig == 9 {
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        } else {
            assert!(status.success(), "{name}: clean exit, got {status}:\n{log}");
            assert!(summary(&log).is_some(), "{name}: summary line:\n{log}");
        }
        // The kernel frees programs once their last reference (fd or link) is gone.
        wait_until(&format!("{name}: the agent's programs to be freed"), WAIT, || live_prog_ids().is_disjoint(&ids))
            .unwrap();
        assert!(cgroup_attachments().iter().all(|(id, _)| !ids.contains(id)), "{name}: cgroup attachment left");
        assert!(link_prog_ids().is_disjoint(&ids), "{name}: link left");
        // Traffic of the host is unaffected.
        assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello", "{name}: traffic after the agent died");
        eprintln!("{name}: {} programs and 1 sockops attachment released", ids.len());
    }
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn two_agents_on_one_host_coexist() {
    require_root();
    let rt = rt();
    let rx1 = rt.block_on(Receiver::start()).expect("receiver 1");
    let rx2 = rt.block_on(Receiver::start()).expect("receiver 2");
    let go = Service::go("go-twice").expect("go server");
    let pid = go.pid().to_string();
    let a = Agent::start(&args(&["--pid", &pid, "--propagation", "on"]), &grpc_env(&rx1)).expect("agent a");
    let b = Agent::start(&args(&["--pid", &pid, "--propagation", "on"]), &grpc_env(&rx2)).expect("agent b");
    let a_ids = prog_ids_of(a.pid);
    for _ in 0..20 {
        assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello");
    }
    rt.block_on(rx1.wait_for(|s| s.len() >= 20, WAIT)).expect("agent a's spans");
    rt.block_on(rx2.wait_for(|s| s.len() >= 20, WAIT)).expect("agent b's spans");
    // Stopping one agent detaches its programs only.
    b.stop().expect("agent b stops");
    assert!(a_ids.is_subset(&live_prog_ids()), "agent a's programs survive agent b's exit");
    for _ in 0..20 {
        assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello");
    }
    rt.block_on(rx1.wait_for(|s| s.len() >= 40, WAIT)).expect("agent a goes on");
    a.stop().expect("agent a stops");
    assert_eq!(rx1.spans().len(), 40, "agent a: every request once");
    assert_eq!(rx2.spans().len(), 20, "agent b: every request while it ran, once");
    let ids: BTreeSet<_> = rx1.spans().iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids.len(), 40, "no duplicate spans within one agent's export");
}
