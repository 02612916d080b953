//! `cargo xtask vm-test`: the agent on the kernels users run, each booted in qemu.
//!
//! For every kernel line asked for (6.1: Debian 12's, 6.12: Debian 13's, both the `cloud-amd64`
//! flavour) the newest package is fetched with `apt-get download` and unpacked under
//! `target/vm/`. qemu boots it under TCG (this machine kind's KVM cannot run stock kernels) with a
//! small initramfs: busybox, the few modules the kernel does not build in, and an init that
//! mounts this host's root read-only through virtiofs, builds a tmpfs root of its directories and
//! runs a script chrooted there. So the guest runs the very agent, fixtures and test binaries built on the host.
//! The script runs `tracer doctor` and a subset of the end-to-end tests; its output comes back on
//! the serial console, with one marker line per step that this command reads.
//!
//! Each kernel boots twice: as shipped, and with `lockdown=integrity` on its command line.
//! `docs/kernels.md` is written from what the guests reported.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{build_agent, build_fixtures, cargo, fixtures_dir, root, run};

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Kernel lines to boot: 6.1, 6.12 (default: both).
    pub kernels: Vec<String>,
    /// The short run: one boot per kernel line, the first as shipped and the next with
    /// `lockdown=integrity` (so both kernels and both lockdown settings run), every test of the
    /// subset in each.
    #[arg(long)]
    pub quick: bool,
    /// Do not rewrite docs/kernels.md (a run of only some kernels or boots never does).
    #[arg(long)]
    pub no_docs: bool,
    /// Which boots of each kernel: `both` (as shipped and with lockdown=integrity), `none` (as
    /// shipped only) or `integrity` (lockdown only).
    #[arg(long, value_enum, default_value_t = Lockdown::Both)]
    pub lockdown: Lockdown,
    /// Run only the subset's tests whose name contains this, or one of these comma-separated
    /// parts (e.g. to repeat the ones that failed).
    #[arg(long)]
    pub only: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lockdown {
    Both,
    None,
    Integrity,
}

impl Lockdown {
    fn boots(self) -> &'static [bool] {
        match self {
            Self::Both => &[false, true],
            Self::None => &[false],
            Self::Integrity => &[true],
        }
    }
}

/// A kernel line and the Debian meta package whose dependency names its newest image.
struct Line {
    name: &'static str,
    meta: &'static str,
}

const LINES: &[Line] = &[
    Line { name: "6.1", meta: "linux-image-cloud-amd64" },
    Line { name: "6.12", meta: "linux-image-6.12-cloud-amd64" },
];

/// Modules the guest needs: to reach the host's root, and veth for the tests' network
/// namespaces. Their dependencies (from each module's `depends=` field) are loaded first. A
/// module the kernel builds in is absent and skipped.
const MODULES: &[&str] = &["virtio_pci", "virtiofs", "veth"];

/// One end-to-end test run in the guest: its test binary (tests/tests/<file>.rs) and name.
#[derive(Clone, Copy)]
struct GuestTest {
    file: &'static str,
    name: &'static str,
    /// What it shows, for the table.
    shows: &'static str,
}

const SUBSET: &[GuestTest] = &[
    GuestTest { file: "e2e_http", name: "go_server_keepalive_over_http_protobuf", shows: "HTTP/1 spans" },
    GuestTest {
        file: "e2e_kernel",
        name: "fd_table_socket_lookup_gives_the_same_traces",
        shows: "cross-process trace, fd-table lookup",
    },
    GuestTest { file: "e2e_go", name: "go_fanout_children_of_server_span", shows: "Go goroutine fan-out" },
    GuestTest {
        file: "e2e_goctx",
        name: "goctx_pool_http_post",
        shows: "Go calls linked through the request's context.Context",
    },
    GuestTest { file: "e2e_grpc", name: "grpc_unary_and_streaming_between_processes", shows: "grpc-go spans" },
    GuestTest { file: "e2e_netrpc", name: "netrpc_calls_paired_on_one_connection", shows: "net/rpc spans" },
    GuestTest { file: "e2e_http2", name: "http2_curl_prior_knowledge_to_go_h2c", shows: "HTTP/2 spans from the wire" },
    GuestTest { file: "e2e_tls", name: "tls_openssl_curl_nginx_and_python", shows: "HTTPS through OpenSSL's uprobes" },
    GuestTest {
        file: "e2e_tls",
        name: "tls_go_crypto_tls_client_and_server",
        shows: "HTTPS and HTTP/2 over TLS through Go crypto/tls uprobes",
    },
    GuestTest {
        file: "e2e_db",
        name: "db_go_redis_pgx_mysql_gomemcache",
        shows: "PostgreSQL, Redis, MySQL and Memcached client spans",
    },
    GuestTest { file: "e2e_messaging", name: "messaging_nats_go_nats_go", shows: "NATS publish and receive spans" },
    GuestTest {
        file: "e2e_phases",
        name: "phases_dns_lookup_through_dnsmasq",
        shows: "DNS lookups (glibc sendmmsg, Go) before connects",
    },
    GuestTest {
        file: "e2e_phases",
        name: "phases_dns_lookup_over_tcp_through_dnsmasq",
        shows: "DNS lookups over TCP (glibc use-vc, Go)",
    },
    GuestTest {
        file: "e2e_lifecycle",
        name: "nothing_stays_attached_after_sigint_sigterm_or_sigkill",
        shows: "nothing left attached",
    },
];

/// Run where the kernel has the sock length tracepoints (the agent's choice there); the guest
/// reports it as not applicable elsewhere.
const TRACEPOINT_TEST: GuestTest = GuestTest {
    file: "e2e_kernel",
    name: "tracepoint_socket_lookup_gives_the_same_traces",
    shows: "cross-process trace, tracepoint lookup",
};

/// What one boot reported.
struct Boot {
    kernel: String,
    lockdown: bool,
    doctor: String,
    /// Each test with its exit status (`None`: it never finished) and its time in seconds.
    results: Vec<(GuestTest, Option<i32>, f64)>,
    /// The guest kernel's first Oops or panic line, when it crashed.
    crash: Option<String>,
    /// The crash of an earlier boot of the same kernel that this boot repeated (qemu's TCG has
    /// crashed a guest while the kernel patched its own text; one repeat tells such a crash from a
    /// kernel that fails every time).
    repeated_after: Option<String>,
    /// From starting qemu to the guest's script running (kernel boot and init).
    boot_secs: f64,
    secs: f64,
}

pub fn vm_test(args: &VmArgs) -> anyhow::Result<()> {
    let ready = prepare(args)?;
    boots(args, ready)
}

/// What the boots need, built and fetched beforehand.
pub struct Prepared {
    virtiofsd: PathBuf,
    agent: PathBuf,
    tests: Vec<(String, PathBuf)>,
    dir: PathBuf,
    /// Each kernel line asked for, unpacked, with its initramfs.
    kernels: Vec<(Kernel, PathBuf)>,
}

/// Builds the agent, fixtures and test binaries, and fetches and unpacks every kernel asked for:
/// everything but the boots, so a caller can run the boots beside other work.
pub fn prepare(args: &VmArgs) -> anyhow::Result<Prepared> {
    if !crate::nix_is_root() {
        bail!("vm-test runs qemu and virtiofsd over this host's root: run it as root");
    }
    for tool in ["qemu-system-x86_64", "apt-get", "dpkg-deb", "xz"] {
        which(tool).with_context(|| format!("{tool} is missing: run scripts/setup.sh --tests"))?;
    }
    let virtiofsd = virtiofsd()?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox is missing (Debian's busybox-static): run scripts/setup.sh --tests")?;
    let lines: Vec<&Line> = if args.kernels.is_empty() {
        LINES.iter().collect()
    } else {
        args.kernels
            .iter()
            .map(|k| {
                LINES.iter().find(|l| l.name == k).with_context(|| {
                    format!(
                        "unknown kernel line {k}; known: {}",
                        LINES.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let agent = build_agent()?;
    build_fixtures()?;
    let tests = test_binaries()?;
    let dir = root().join("target/vm");
    std::fs::create_dir_all(&dir)?;
    let mut kernels = Vec::new();
    for line in lines {
        let kernel = fetch_kernel(line, &dir)?;
        let initrd = initramfs(&kernel, &busybox, &dir)?;
        kernels.push((kernel, initrd));
    }
    Ok(Prepared { virtiofsd, agent, tests, dir, kernels })
}

/// Boots every kernel of `ready` (one or both lockdown settings each), runs the subset, reports.
pub fn boots(args: &VmArgs, ready: Prepared) -> anyhow::Result<()> {
    let Prepared { virtiofsd, agent, tests, dir, kernels } = ready;
    let mut boots = Vec::new();
    for (i, (kernel, initrd)) in kernels.iter().enumerate() {
        let quick_boot = [i % 2 == 1];
        let settings = if args.quick { &quick_boot[..] } else { args.lockdown.boots() };
        for &lockdown in settings {
            let mut subset: Vec<GuestTest> = SUBSET.to_vec();
            subset.push(TRACEPOINT_TEST);
            if let Some(only) = &args.only {
                subset.retain(|t| only.split(',').any(|part| t.name.contains(part)));
            }
            let mut b = boot(kernel, initrd, &virtiofsd, lockdown, &agent, &tests, &subset, &dir)?;
            if let Some(crash) = b.crash.take() {
                eprintln!("vm-test: the guest kernel crashed ({crash}); booting it once more");
                b = boot(kernel, initrd, &virtiofsd, lockdown, &agent, &tests, &subset, &dir)?;
                b.repeated_after = Some(crash);
            }
            boots.push(b);
        }
    }
    let report = report(&boots);
    eprintln!("{report}");
    // The table is only rewritten from a run of every kernel line.
    if !args.no_docs && !args.quick && args.only.is_none() && args.kernels.is_empty() && args.lockdown == Lockdown::Both
    {
        std::fs::write(root().join("docs/kernels.md"), docs(&boots))?;
        eprintln!("vm-test: wrote docs/kernels.md");
    }
    let failed: Vec<String> = boots
        .iter()
        .flat_map(|b| {
            b.results.iter().filter(|(_, r, _)| *r != Some(0) && *r != Some(SKIPPED)).map(move |(t, r, _)| {
                format!(
                    "{}{} {}::{} ({})",
                    b.kernel,
                    if b.lockdown { " lockdown" } else { "" },
                    t.file,
                    t.name,
                    exit(*r)
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        bail!("vm-test: {} failed:\n  {}", failed.len(), failed.join("\n  "));
    }
    Ok(())
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found"))
}

/// virtiofsd from PATH, or built once with `cargo install` (it is not packaged for Debian 12).
fn virtiofsd() -> anyhow::Result<PathBuf> {
    if let Ok(p) = which("virtiofsd") {
        return Ok(p);
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("no CARGO_HOME or HOME")?;
    let p = home.join("bin/virtiofsd");
    if !p.exists() {
        run(Command::new("cargo").args(["install", "--locked", "virtiofsd"]))?;
    }
    Ok(p)
}

/// The end-to-end test binaries, built (not run) as `cargo xtask e2e` builds them.
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = cargo()
        .args(["test", "--release", "-p", "tracer-tests", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) else { continue };
        if v["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test")) {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(bins)
}

struct Kernel {
    release: String,
    tree: PathBuf,
    vmlinuz: PathBuf,
}

/// The newest image of `line`, downloaded and unpacked once.
fn fetch_kernel(line: &Line, dir: &Path) -> anyhow::Result<Kernel> {
    let deps = Command::new("apt-cache").args(["depends", line.meta]).output().context("apt-cache depends")?;
    let deps = String::from_utf8_lossy(&deps.stdout);
    let Some(image) = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_owned)
    else {
        bail!("{} names no kernel image (apt-get update?):\n{deps}", line.meta);
    };
    let release = image.trim_start_matches("linux-image-").to_string();
    let tree = dir.join("k").join(&release);
    let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        let debs = dir.join("deb");
        std::fs::create_dir_all(&debs)?;
        run(Command::new("apt-get").args(["download", &image]).current_dir(&debs))?;
        let deb = std::fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{image}_"))))
            .with_context(|| format!("apt-get download {image} left no .deb"))?;
        std::fs::create_dir_all(&tree)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    }
    eprintln!("vm-test: {} is {release}", line.name);
    Ok(Kernel { release, tree, vmlinuz })
}

/// A newc cpio archive, written by hand: a handful of entries, no tool needed.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /host /root
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /modules/order); do /bin/busybox insmod /modules/$m.ko || echo "VM-INIT insmod $m failed"; done
fail() { echo "VM-INIT-FAILED $*"; /bin/busybox cat /proc/filesystems; /bin/busybox poweroff -f; }
# The virtio device is probed asynchronously after its driver loads: try for up to 20 s.
n=0
until /bin/busybox mount -t virtiofs hostroot /host -o ro 2>/dev/null; do
  n=$((n+1)); [ $n -gt 200 ] && fail "virtiofs"; /bin/busybox usleep 100000
done
# A writable root of tmpfs whose directories are the host's, bound read-only (nothing can be
# mounted on an overlay or a directory of virtiofs, so the kernel's own filesystems get fresh
# directories of the tmpfs instead).
/bin/busybox mount -t tmpfs tmpfs /root
for e in /host/* /host/.[!.]*; do
  n=${e#/host/}
  if [ -L "$e" ]; then /bin/busybox ln -s "$(/bin/busybox readlink "$e")" "/root/$n"
  elif [ -d "$e" ]; then
    /bin/busybox mkdir -p "/root/$n"
    case "$n" in proc|sys|dev|tmp|run) ;; *) /bin/busybox mount -o bind "$e" "/root/$n" || fail "bind $n";; esac
  fi
done
/bin/busybox chmod 1777 /root/tmp
/bin/busybox mount -t proc proc /root/proc
/bin/busybox mount -t sysfs sys /root/sys
/bin/busybox mount -t devtmpfs dev /root/dev
script=$(/bin/busybox sed -n 's/.*tracer.script=\([^ ]*\).*/\1/p' /proc/cmdline)
/bin/busybox chroot /root /bin/sh "$script"
echo "VM-SCRIPT-EXIT $?"
/bin/busybox poweroff -f
"#;

/// The initramfs of one kernel: busybox, the modules it needs, the init above.
fn initramfs(k: &Kernel, busybox: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut c = Cpio { out: Vec::new(), ino: 0 };
    for d in ["bin", "modules", "dev", "proc", "sys"] {
        c.entry(d, 0o040755, &[]);
    }
    c.entry("bin/busybox", 0o100755, &std::fs::read(busybox)?);
    c.entry("init", 0o100755, INIT.as_bytes());
    let mods = k.tree.join("lib/modules").join(&k.release).join("kernel");
    let mut loaded = Vec::new();
    for m in MODULES {
        with_deps(&mods, m, &mut loaded)?;
    }
    let mut order = String::new();
    for (m, bytes) in &loaded {
        c.entry(&format!("modules/{m}.ko"), 0o100644, bytes);
        order.push_str(m);
        order.push('\n');
    }
    c.entry("modules/order", 0o100644, order.as_bytes());
    c.entry("TRAILER!!!", 0, &[]);
    let path = dir.join(format!("initrd-{}.cpio", k.release));
    std::fs::write(&path, &c.out)?;
    Ok(path)
}

/// `name` after its dependencies, each once, as (name, uncompressed module).
fn with_deps(dir: &Path, name: &str, out: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    if out.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let Some(path) = find_module(dir, name) else { return Ok(()) };
    let bytes = if path.extension().is_some_and(|e| e == "xz") {
        let x = Command::new("xz").arg("-dc").arg(&path).output()?;
        if !x.status.success() {
            bail!("xz -dc {}: {}", path.display(), String::from_utf8_lossy(&x.stderr));
        }
        x.stdout
    } else {
        std::fs::read(&path)?
    };
    for dep in depends(&bytes) {
        with_deps(dir, &dep, out)?;
    }
    out.push((name.to_string(), bytes));
    Ok(())
}

/// The `depends=` field of a module's `.modinfo`: the modules it needs loaded first.
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else { return Vec::new() };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').filter(|d| !d.is_empty()).map(|d| d.replace('-', "_")).collect()
}

fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find_module(&p, name) {
                return Some(found);
            }
        } else if let Some(f) = p.file_name().and_then(|f| f.to_str())
            && (f == format!("{name}.ko") || f == format!("{name}.ko.xz"))
        {
            return Some(p);
        }
    }
    None
}

/// Boots `k` once, runs the doctor and `subset`, and reads back what happened.
#[allow(clippy::too_many_arguments)]
fn boot(
    k: &Kernel,
    initrd: &Path,
    virtiofsd: &Path,
    lockdown: bool,
    agent: &Path,
    tests: &[(String, PathBuf)],
    subset: &[GuestTest],
    dir: &Path,
) -> anyhow::Result<Boot> {
    let tag = format!("{}{}", k.release, if lockdown { "-lockdown" } else { "" });
    let mut script = String::from(
        "set -u\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         mount -t securityfs securityfs /sys/kernel/security\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\n\
         mkdir -p /dev/shm /dev/pts && mount -t tmpfs tmpfs /dev/shm && mount -t devpts devpts /dev/pts\n\
         ip link set lo up\n\
         echo \"VM-KERNEL $(uname -r) lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null || echo none)\"\n",
    );
    let _ =
        writeln!(script, "echo VM-DOCTOR-BEGIN\n{} doctor --verbose 2>&1\necho \"VM-DOCTOR-END $?\"", agent.display());
    for t in subset {
        let bin = tests
            .iter()
            .find(|(n, _)| n == t.file)
            .map(|(_, p)| p)
            .with_context(|| format!("no test binary for {}", t.file))?;
        let guard = if t.name == TRACEPOINT_TEST.name {
            format!(
                "if [ ! -e /sys/kernel/tracing/events/sock/sock_send_length ]; then \
                 echo \"VM-TEST-END {}::{} {SKIPPED}\"; else\n",
                t.file, t.name
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            script,
            "{guard}echo VM-TEST-BEGIN {file}::{name}\n\
             TRACER_TEST_PATIENCE={PATIENCE} TRACER_BIN={agent} TRACER_FIXTURES={fx} TRACER_SOURCE_ROOT={src} \
             {bin} --ignored --exact {name} \
             --test-threads=1 --nocapture 2>&1\n\
             echo \"VM-TEST-END {file}::{name} $?\"{fi}",
            fi = if guard.is_empty() { "" } else { "\nfi" },
            file = t.file,
            name = t.name,
            agent = agent.display(),
            fx = fixtures_dir().display(),
            src = root().display(),
            bin = bin.display(),
        );
    }
    let script_path = dir.join(format!("guest-{tag}.sh"));
    std::fs::write(&script_path, script)?;

    let sock = dir.join(format!("virtiofs-{tag}.sock"));
    let _ = std::fs::remove_file(&sock);
    let _vfs = ChildGuard(
        Command::new(virtiofsd)
            .arg(format!("--socket-path={}", sock.display()))
            .args(["--shared-dir=/", "--readonly", "--sandbox=none", "--cache=auto", "--log-level=error"])
            .stdin(Stdio::null())
            .spawn()
            .context("virtiofsd")?,
    );
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("virtiofsd made no socket at {} in 20 s", sock.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut append = format!("console=ttyS0 panic=-1 quiet tracer.script={}", script_path.display());
    if lockdown {
        append.push_str(" lockdown=integrity");
    }
    let mem = "3G";
    let log_path = dir.join(format!("console-{tag}.log"));
    eprintln!("vm-test: booting {tag} (console: {})", log_path.display());
    let started = Instant::now();
    // In CI the guest boots beside the end-to-end suite on the same two CPUs; its one TCG thread,
    // tens of times slower than the host already, gets a larger share, so a guest test is not
    // starved into its timeouts.
    let mut qemu = Command::new("nice")
        .args(["-n", "-5", "qemu-system-x86_64"])
        .args([
            "-accel",
            "tcg,thread=single",
            "-smp",
            "2",
            "-m",
            mem,
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .args(["-chardev", &format!("socket,id=vfs,path={}", sock.display())])
        .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"])
        .args(["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on"), "-numa", "node,memdev=mem"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    // A guest that hangs is killed: a watchdog thread ends qemu past the limit.
    let limit = Duration::from_secs(300 + 240 * subset.len() as u64);
    let pid = qemu.id();
    let watchdog = std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < limit {
            std::thread::sleep(Duration::from_secs(1));
            // SAFETY: signal 0 only probes whether the process still exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: ends the qemu this command started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let mut log = std::fs::File::create(&log_path)?;
    let mut doctor = String::new();
    let (mut in_doctor, mut results, mut kernel_line) = (false, Vec::new(), String::new());
    let (mut boot_secs, mut test_started) = (0.0, started);
    let mut crash: Option<String> = None;
    // The current test's output, shown when it fails (CI keeps only this command's stderr).
    let mut output: Vec<String> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        let line = line.trim_end_matches('\r').to_string();
        // The firmware's banner and terminal escapes can precede the first line the guest prints.
        let line = match line.find("VM-") {
            Some(at) if at > 0 => line[at..].to_string(),
            _ => line,
        };
        use std::io::Write as _;
        let _ = writeln!(log, "{line}");
        if line.starts_with("VM-TEST-") || line.starts_with("VM-KERNEL") || line.starts_with("VM-INIT") {
            eprintln!("vm-test [{tag}] {line}");
        }
        if crash.is_none() && (line.contains("Oops:") || line.contains("Kernel panic")) {
            crash = Some(line.split_once("] ").map_or(line.as_str(), |(_, l)| l).trim().to_string());
            eprintln!("vm-test [{tag}] guest kernel crashed: {line}");
        }
        if let Some(c) = crash.as_mut()
            && !c.contains(" at ")
            && let Some((_, rip)) = line.split_once("RIP: 0010:")
        {
            c.push_str(" at ");
            c.push_str(rip.trim());
        }
        if line == "VM-DOCTOR-BEGIN" {
            in_doctor = true;
        } else if line.starts_with("VM-DOCTOR-END") {
            in_doctor = false;
        } else if in_doctor {
            doctor.push_str(&line);
            doctor.push('\n');
        } else if let Some(rest) = line.strip_prefix("VM-TEST-END ") {
            let (name, code) = rest.rsplit_once(' ').unwrap_or((rest, ""));
            let code = code.parse::<i32>().ok();
            if !matches!(code, Some(0 | SKIPPED)) {
                eprintln!("vm-test [{tag}] {name} failed; its output:");
                for l in failure_lines(&output) {
                    eprintln!("vm-test [{tag}]   {l}");
                }
            }
            results.push((name.to_string(), code, test_started.elapsed().as_secs_f64()));
        } else if line.starts_with("VM-TEST-BEGIN ") {
            test_started = Instant::now();
            output.clear();
        } else if let Some(rest) = line.strip_prefix("VM-KERNEL ") {
            kernel_line = rest.to_string();
            boot_secs = started.elapsed().as_secs_f64();
        } else {
            output.push(line);
        }
    }
    let _ = qemu.wait();
    let killed = watchdog.join().unwrap_or(false);
    let secs = started.elapsed().as_secs_f64();
    eprintln!("vm-test: {tag} done in {secs:.0} s{}", if killed { " (killed at the time limit)" } else { "" });
    if kernel_line.is_empty() {
        bail!("{tag}: the guest never ran its script; see {}", log_path.display());
    }
    let results = subset
        .iter()
        .map(|t| {
            let key = format!("{}::{}", t.file, t.name);
            let found = results.iter().find(|(n, _, _)| *n == key);
            (*t, found.and_then(|(_, c, _)| *c), found.map_or(0.0, |(_, _, secs)| *secs))
        })
        .collect();
    Ok(Boot { kernel: k.release.clone(), lockdown, doctor, results, crash, repeated_after: None, boot_secs, secs })
}

/// What to show of a failed test's output: its first panic's message, whole up to its
/// backtrace (an assertion's `left:` / `right:` come after a message that may dump spans; at
/// most 200 lines), or the last 40 lines when it did not panic.
fn failure_lines(output: &[String]) -> &[String] {
    let Some(at) = output.iter().position(|l| l.contains("panicked at")) else {
        return &output[output.len().saturating_sub(40)..];
    };
    let end = output[at..]
        .iter()
        .position(|l| l.starts_with("stack backtrace:") || l.starts_with("note: run with `RUST_BACKTRACE"))
        .map_or(output.len(), |n| at + n);
    &output[at..end.min(at + 200)]
}

/// A helper process that ends with the boot it serves.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many times longer a guest test waits for each condition than on the host (the tests'
/// `TRACER_TEST_PATIENCE`): the guest runs under TCG, and in CI beside the end-to-end suite.
const PATIENCE: u32 = 3;

/// The exit status the guest reports for a test that does not apply to its kernel.
const SKIPPED: i32 = 200;

fn exit(r: Option<i32>) -> String {
    match r {
        Some(0) => "pass".into(),
        Some(SKIPPED) => "not applicable".into(),
        Some(c) => format!("FAIL, exit {c}"),
        None => "FAIL, did not finish".into(),
    }
}

/// The doctor's lines that say which hooks it chose.
fn chosen(doctor: &str) -> Vec<String> {
    doctor
        .lines()
        .filter(|l| l.starts_with("mode") || l.starts_with("propagation"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The doctor's checks (indented `name  yes|no (why)` lines) as the program types, helpers and
/// features this kernel offers and those it does not.
fn available(doctor: &str) -> String {
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for line in doctor.lines().filter(|l| l.starts_with("  ")) {
        let line = line.trim();
        if let Some(name) = line.strip_suffix(" yes") {
            yes.push(name.trim().to_string());
        } else if let Some((name, _)) = line.split_once(" no") {
            no.push(name.trim().to_string());
        }
    }
    format!("yes: {}<br>no: {}", yes.join(", "), if no.is_empty() { "–".into() } else { no.join(", ") })
}

fn report(boots: &[Boot]) -> String {
    let mut s = String::new();
    for b in boots {
        let _ = writeln!(
            s,
            "{}{} ({:.0} s, boot {:.0} s):",
            b.kernel,
            if b.lockdown { " lockdown=integrity" } else { "" },
            b.secs,
            b.boot_secs
        );
        if let Some(c) = &b.repeated_after {
            let _ = writeln!(s, "  (second boot: the first crashed with {c})");
        }
        for (t, r, secs) in &b.results {
            let _ = writeln!(s, "  {}::{}: {} ({secs:.0} s)", t.file, t.name, exit(*r));
        }
    }
    s
}

fn docs(boots: &[Boot]) -> String {
    let mut s = String::from(
        "# Kernels\n\nThe kernels the agent is proven on, and what it needs from a kernel. The table is written by \
         `cargo xtask vm-test` (source: `xtask/src/vm.rs`); do not edit it by hand.\n\n",
    );
    let _ = writeln!(s, "## Proven\n");
    let _ = writeln!(
        s,
        "Each kernel is Debian's `cloud-amd64` image, booted in qemu (TCG) with this host's root shared into \
         the guest; the guest runs the agent, fixtures and test binaries built on the host.\n"
    );
    let _ = writeln!(s, "| kernel | lockdown | available (`tracer doctor`) | hooks chosen | tests | boot | total |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | ---: | ---: |");
    for b in boots {
        let mut tests: Vec<String> = b
            .results
            .iter()
            .map(|(t, r, secs)| match r {
                Some(0) => format!("{}: pass ({secs:.0} s)", t.shows),
                _ => format!("{}: {}", t.shows, exit(*r)),
            })
            .collect();
        if let Some(c) = &b.repeated_after {
            tests.push(format!("(second boot: the first crashed with `{c}`)"));
        }
        if let Some(c) = &b.crash {
            tests.push(format!("guest kernel crashed: `{c}`"));
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} s | {:.0} s |",
            b.kernel,
            if b.lockdown { "integrity" } else { "none" },
            available(&b.doctor).replace('|', "/"),
            chosen(&b.doctor).join("<br>").replace('|', "/"),
            tests.join("<br>"),
            b.boot_secs,
            b.secs
        );
    }
    let _ = writeln!(
        s,
        "\nThe host this project is developed on runs Linux 6.18 with `lockdown=integrity` and without \
         kprobes or fentry; the full end-to-end suite (`cargo xtask e2e`) runs there.\n"
    );
    s.push_str(MINIMA);
    s
}

/// What the agent uses, and since when the kernel has it.
const MINIMA: &str = "## What the agent needs

| feature | used for | since |
| --- | --- | --- |
| BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`) | every record to the agent | 5.8 |
| BTF of the running kernel (`/sys/kernel/btf/vmlinux`) | struct offsets (`sock`, `task_struct`, files) | 5.4 (with `CONFIG_DEBUG_INFO_BTF`) |
| tracepoints `syscalls:sys_{enter,exit}_*` | socket reads and writes | 4.7 (BPF on tracepoints) |
| `sock:sock_{send,recv}_length` | the socket of a transfer, for free | absent in 6.1, present in 6.12; without them the task's fd table is read instead (same data) |
| uprobes with multiple attach points (cookies) | Go runtime, net/http, net/rpc, grpc-go | 5.15 (`bpf_get_attach_cookie`) |
| `BPF_PROG_TYPE_SOCK_OPS` on cgroup v2 | the trace-context TCP option (`--propagation on`) | 4.13; TCP header options 5.10; `bpf_get_current_pid_tgid` is offered to it only from 6.10, so the connecting process is read from `bpf_get_current_task()` and `task_struct.{pid,tgid}` (offsets from BTF) on every kernel |
| `bpf_probe_read_user`/`_kernel` | every read of process or kernel memory | 5.5 |
| LRU hash maps, per-CPU arrays | connection and call state | 4.10 |

Below a feature the agent refuses to start and names it (`tracer doctor` lists each check);
it never runs with a silent gap. Lockdown (`integrity`) forbids writing user memory and
kprobes-based overrides, neither of which the agent uses.
";

#[cfg(test)]
mod tests {
    use super::failure_lines;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// An assertion whose message dumps a long span: its `left:` / `right:` lines are shown,
    /// the backtrace and what came before the panic are not.
    #[test]
    fn a_failure_shows_the_whole_panic_message_up_to_the_backtrace() {
        let mut out = lines(&["running 1 test", "agent started"]);
        out.push("thread 't' panicked at tests/tests/e2e_tls.rs:67:5:".into());
        out.extend((0..150).map(|i| format!("    span field {i}")));
        out.extend(lines(&[
            "  left: Some([\"request.sent\"])",
            " right: Some([\"connect\"])",
            "stack backtrace:",
            "  0: x",
        ]));
        let shown = failure_lines(&out);
        assert!(shown[0].contains("panicked at"), "{shown:?}");
        assert_eq!(shown.last().map(String::as_str), Some(" right: Some([\"connect\"])"));
        assert_eq!(shown.len(), 153);
    }

    #[test]
    fn a_failure_without_a_panic_shows_its_last_40_lines() {
        let out: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let shown = failure_lines(&out);
        assert_eq!((shown.len(), shown[0].as_str()), (40, "line 60"));
    }
}
