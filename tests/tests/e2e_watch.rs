//! Privileged end-to-end test of `tracer watch` in a real terminal: a tmux pane of 80x24 runs
//! the view on a traced fixture service; the test reads the screen (`tmux capture-pane`) until
//! the expected traces are drawn, checks the error filter, pauses, quits with `q` (and, in a
//! second run, with SIGTERM), and checks the exit status, the terminal left in cooked mode and
//! that none of the agent's programs stays loaded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tracer_tests::harness::{Service, agent_bin, curl, live_prog_ids, prog_ids_of, require_root, run_ok, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// A tmux server of its own with one 80x24 session running a shell command. Killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(tag: &str, command: &str) -> Self {
        let t = Tmux { socket: format!("tracer-e2e-{}-{tag}", std::process::id()) };
        run_ok(
            Command::new("tmux")
                .args(["-L", &t.socket, "-f", "/dev/null", "new-session", "-d", "-s", "w", "-x", "80", "-y", "24"])
                .arg(command),
        )
        .expect("tmux new-session");
        t
    }

    fn screen(&self) -> String {
        run_ok(Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "w"])).unwrap_or_default()
    }

    fn keys(&self, keys: &str) {
        run_ok(Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "w", keys])).expect("send-keys");
    }

    /// Polls the screen until `cond` holds; panics with the last screen otherwise.
    fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let res = wait_until(what, WAIT, || {
            last = self.screen();
            cond(&last)
        });
        if let Err(e) = res {
            panic!("{e}; screen:\n{last}");
        }
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

struct Run {
    tmux: Tmux,
    dir: PathBuf,
    pid: u32,
    ids: BTreeSet<u64>,
}

/// Starts `tracer watch <args>` in a fresh 80x24 tmux pane and waits until it is attached. After
/// the view exits the shell records its status and the terminal modes, then stays (so the pane
/// shows what the view left behind).
fn start_watch(tag: &str, extra: &[&str]) -> Run {
    let dir = std::env::temp_dir().join(format!("tracer-e2e-watch-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let command = format!(
        "env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT {bin} watch {args} \
         --ready-file {d}/ready --log-file {d}/agent.log; echo $? > {d}/exit; stty -a > {d}/stty; exec sleep 600",
        bin = agent_bin().display(),
        args = extra.join(" "),
    );
    let tmux = Tmux::start(tag, &command);
    let ready = dir.join("ready");
    let log = dir.join("agent.log");
    wait_until("the agent in the view to attach its probes", Duration::from_secs(60), || {
        ready.exists() || dir.join("exit").exists()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", tmux.screen(), read(&log)));
    assert!(!dir.join("exit").exists(), "watch exited at start:\n{}\n{}", tmux.screen(), read(&log));
    let pid: u32 = read(&ready).trim().parse().expect("pid in the ready file");
    let ids = prog_ids_of(pid);
    assert!(ids.len() >= 10, "the agent's programs are visible: {ids:?}");
    Run { tmux, dir, pid, ids }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Waits for the view to exit; checks status 0, cooked terminal, screen restored, nothing left.
fn finish(run: &Run, how: &str) {
    let exit = run.dir.join("exit");
    wait_until(&format!("watch to exit after {how}"), WAIT, || !read(&exit).is_empty())
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", run.tmux.screen(), read(&run.dir.join("agent.log"))));
    assert_eq!(read(&exit).trim(), "0", "{how}: exit status\n{}", read(&run.dir.join("agent.log")));
    wait_until("stty output", WAIT, || !read(&run.dir.join("stty")).is_empty()).unwrap();
    let stty = read(&run.dir.join("stty"));
    let modes: Vec<&str> = stty.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(modes.contains(&mode), "{how}: terminal left without {mode}: {stty}");
    }
    assert!(!run.tmux.screen().contains("tracer watch"), "{how}: the view left the alternate screen");
    wait_until(&format!("{how}: the agent's programs to be freed"), WAIT, || live_prog_ids().is_disjoint(&run.ids))
        .unwrap();
    let log = read(&run.dir.join("agent.log"));
    assert!(log.contains("stopped: "), "{how}: summary line in the log:\n{log}");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn watch_draws_traces_in_an_80x24_terminal_filters_and_quits_cleanly() {
    require_root();
    let go = Service::go("go-watch").expect("go server");
    let pid = go.pid().to_string();

    // 1. Every trace; quit with q.
    let run = start_watch("all", &["--pid", &pid]);
    for _ in 0..2 {
        assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello");
    }
    assert_eq!(curl(&[&go.url("/status/503")]).unwrap(), "status 503");
    let screen = run.tmux.wait_screen("both kinds of traces on screen", |s| {
        s.matches("srv GET /hello").count() == 2 && s.contains("srv GET /status/503")
    });
    assert!(screen.contains("tracer watch  3 traces"), "{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() <= 24 && lines.iter().all(|l| l.chars().count() <= 80), "{screen}");
    let failed = lines.iter().find(|l| l.contains("srv GET /status/503")).unwrap();
    assert!(failed.contains("go-watch") && failed.contains(" 503 "), "{failed}");
    let ok = lines.iter().find(|l| l.contains("srv GET /hello")).unwrap();
    assert!(ok.contains("go-watch") && ok.contains(" 200 "), "{ok}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("-- ") && l.contains(" ERROR ")).count(), 1, "{screen}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("-- ") && l.contains(" 1 span ") && l.contains(" OK ")).count(),
        2,
        "{screen}"
    );
    // Pause: new traces wait; resume shows them.
    run.tmux.keys("p");
    run.tmux.wait_screen("paused", |s| s.contains("PAUSED (0 waiting)"));
    assert_eq!(curl(&[&go.url("/status/404")]).unwrap(), "status 404");
    let paused = run.tmux.wait_screen("a trace held while paused", |s| s.contains("PAUSED (1 waiting)"));
    assert!(!paused.contains("/status/404"), "{paused}");
    run.tmux.keys("p");
    run.tmux
        .wait_screen("the held trace shown on resume", |s| s.contains("srv GET /status/404") && !s.contains("PAUSED"));
    run.tmux.keys("q");
    finish(&run, "q");
    eprintln!("watch: pid {} drew 4 traces, paused and quit on q; {} programs released", run.pid, run.ids.len());

    // 2. Errors only: OK traces are counted as filtered out, never drawn; stop with SIGTERM.
    let run = start_watch("errors", &["--pid", &pid, "--errors-only"]);
    for _ in 0..3 {
        assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello");
    }
    assert_eq!(curl(&[&go.url("/status/500")]).unwrap(), "status 500");
    let screen = run.tmux.wait_screen("the failed trace drawn, the OK ones filtered", |s| {
        s.contains("srv GET /status/500") && s.contains("(3 filtered out)")
    });
    assert!(!screen.contains("/hello"), "{screen}");
    assert!(screen.contains("tracer watch  1 traces"), "{screen}");
    run_ok(Command::new("kill").args(["-TERM", &run.pid.to_string()])).unwrap();
    finish(&run, "SIGTERM");
}
