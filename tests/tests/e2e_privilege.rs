//! Privileged end-to-end tests of least privilege: the agent runs with exactly the capabilities
//! docs/security.md lists (as uid 0 without root's implicit capabilities, the way a container
//! with `cap_drop: ALL` runs it), and without one of them it names what is missing, exits
//! non-zero and loads nothing.

use std::process::Command;
use std::time::Duration;
use tracer_tests::harness::{Agent, Service, agent_bin, args, curl, grpc_env, require_root, rt};
use tracer_tests::receiver::Receiver;

const WAIT: Duration = Duration::from_secs(30);

/// `setpriv` arguments that exec the agent with exactly `caps` (names without `cap_`): uid 0
/// stays, but the `noroot` securebits stop it from regaining every capability on exec.
fn with_caps(caps: &[&str]) -> Vec<String> {
    let list: String =
        std::iter::once("-all".to_string()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>().join(",");
    vec![
        "setpriv".into(),
        "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked".into(),
        format!("--inh-caps={list}"),
        format!("--ambient-caps={list}"),
        format!("--bounding-set={list}"),
        "--".into(),
    ]
}

fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    tracer_user::kernel::caps::parse_cap_eff(&status).expect("CapEff")
}

fn bits(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |acc, c| acc | 1 << c)
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn runs_with_exactly_the_documented_capabilities() {
    use tracer_user::kernel::caps::{CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON};
    require_root();
    let rt = rt();
    let go = Service::go("go-caps").expect("go server");
    for (caps, extra, want) in [
        (&["bpf", "perfmon"][..], &[][..], bits(&[CAP_BPF, CAP_PERFMON])),
        (
            &["bpf", "perfmon", "net_admin"][..],
            &["--propagation", "on"][..],
            bits(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]),
        ),
    ] {
        let rx = rt.block_on(Receiver::start()).expect("receiver");
        let mut a = args(&["--pid", &go.pid().to_string()]);
        a.extend(args(extra));
        let agent = Agent::start_wrapped(&with_caps(caps), &a, &grpc_env(&rx))
            .unwrap_or_else(|e| panic!("agent with {caps:?}: {e:#}"));
        assert_eq!(cap_eff(agent.pid), want, "the agent holds exactly {caps:?}");
        // The same, as capsh names it.
        let decoded = Command::new("capsh").arg(format!("--decode={:#x}", cap_eff(agent.pid))).output().expect("capsh");
        let decoded = String::from_utf8_lossy(&decoded.stdout);
        let mut names: Vec<&str> =
            decoded.trim().split_once('=').map(|(_, n)| n.split(',').collect()).unwrap_or_default();
        names.sort_unstable();
        let mut expected: Vec<String> = caps.iter().map(|c| format!("cap_{c}")).collect();
        expected.sort_unstable();
        assert_eq!(names, expected, "capsh --decode of the agent's effective set: {decoded}");
        eprintln!("agent's effective capabilities (capsh): {}", decoded.trim());
        for _ in 0..5 {
            assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello");
        }
        rt.block_on(rx.wait_for(|s| s.len() >= 5, WAIT)).expect("spans");
        let log = agent.stop().expect("agent stops cleanly");
        assert_eq!(rx.spans().len(), 5, "{caps:?}: every request traced once");
        assert!(log.contains("CAP_SYS_PTRACE is missing"), "the optional capability is named:\n{log}");
        eprintln!("works with exactly {caps:?} {extra:?}");
    }
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn a_missing_capability_is_named_and_nothing_is_loaded() {
    require_root();
    for (caps, extra, missing) in [
        (&["perfmon"][..], &[][..], "CAP_BPF"),
        (&["bpf"][..], &[][..], "CAP_PERFMON"),
        (&["bpf", "perfmon"][..], &["--propagation", "on"][..], "CAP_NET_ADMIN"),
        (&[][..], &[][..], "CAP_BPF"),
    ] {
        let out = Command::new(&with_caps(caps)[0])
            .args(&with_caps(caps)[1..])
            .arg(agent_bin())
            .arg("run")
            .args(extra)
            .args(["--duration", "5"])
            .output()
            .expect("run the agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{caps:?}: exits with 1:\n{err}");
        assert!(err.contains("missing capabilities") && err.contains(missing), "{caps:?}: names {missing}:\n{err}");
        assert!(!err.contains("attached") && !err.contains("panicked"), "{caps:?}: loads nothing:\n{err}");
        eprintln!("without {missing}: {}", err.lines().last().unwrap_or(""));
    }
}
