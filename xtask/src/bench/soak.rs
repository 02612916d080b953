//! `cargo xtask bench --soak SECONDS`: the agent traces the Go fixture at a steady rate for a long
//! time (an hour for the hardening budget); every minute the agent's resident memory and the size
//! of each of its tables are sampled. Passes when every request became a span, resident memory
//! stayed flat and no table grew. Writes docs/soak.md.

use super::*;

/// A minute's sample.
#[derive(Debug, Clone)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    /// The receiver's resident memory (it keeps nothing; a slow receiver would hold the agent's
    /// export queue full).
    receiver_rss_kib: u64,
    requests: u64,
    spans: u64,
    /// Table name -> entries (kernel tables, streams connections, correlator nodes and
    /// pending spans).
    tables: BTreeMap<String, u64>,
}

/// Latest table sizes from the agent's debug stats lines.
fn table_sizes(log: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Some(line) = log.lines().rev().find_map(|l| l.split_once("kernel tables ").map(|(_, r)| r)) {
        for kv in line.split_whitespace() {
            if let Some((name, v)) = kv.split_once('=')
                && let Some(n) = v.split_once('/').and_then(|(n, _)| n.parse().ok())
            {
                out.insert(format!("kernel {name}"), n);
            }
        }
    }
    if let Some(line) = log.lines().rev().find(|l| l.contains("pipeline PipelineStats")) {
        let part = |name: &str| line.split(name).nth(1).unwrap_or("");
        for (what, section, key) in [
            ("streams connections", "StreamsStats", "connections: "),
            ("correlator nodes", "CorrelatorStats", "nodes: "),
            ("correlator pending", "CorrelatorStats", "pending: "),
        ] {
            let n = part(section)
                .split(key)
                .nth(1)
                .and_then(|r| r.split([',', ' ', '}']).next())
                .and_then(|v| v.parse().ok());
            if let Some(n) = n {
                out.insert(what.to_string(), n);
            }
        }
    }
    out
}

/// The 1-minute load average, as /proc/loadavg prints it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// This process's nice value (children inherit it).
fn own_nice() -> String {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(16).map(str::to_string)))
        .unwrap_or_else(|| "?".into())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The verdict on one series: its largest value in the last third of the run against the first
/// third (after the warm-up). A series "grows" when the last third exceeds the first by more
/// than `rel` plus `abs`.
fn grows(values: &[u64], rel: f64, abs: u64) -> Option<(u64, u64)> {
    let n = values.len();
    if n < 3 {
        return None;
    }
    let first = *values[..n / 3].iter().max()?;
    let last = *values[n - n / 3..].iter().max()?;
    (last as f64 > first as f64 * (1.0 + rel) + abs as f64).then_some((first, last))
}

pub fn soak(seconds: u64, rate: u64) -> Result<()> {
    let plan = Plan { servers: vec![ServerKind::Go], ..Plan::from_args(&BenchArgs::quick()) };
    let tools = Tools::build(&plan, true)?;
    let tmp = TempDir::new()?;
    let server = start_server(&tools, ServerKind::Go, &tmp.path)?;
    let receiver = Receiver::start(&tools.receiver)?;
    let agent = Agent::start_logging(
        &tools.agent,
        &server.pids,
        "same-host",
        &receiver.grpc_endpoint,
        &tmp.path,
        "info,tracer_user::agent=debug",
    )?;
    let started = Instant::now();
    let machine = Machine::read();
    let load_at_start = load_average();
    let mut samples = Vec::new();
    let (mut requests, mut errors) = (0u64, 0u64);
    eprintln!("soak: {seconds} s at {rate} req/s on the Go fixture, sampling every minute");
    while started.elapsed().as_secs() < seconds {
        let chunk = (seconds - started.elapsed().as_secs()).clamp(1, 60);
        let load = fixed_rate(server.port, rate, Duration::from_secs(chunk))?;
        requests += load.completed;
        errors += load.errors;
        // Spans of this minute have arrived (or stopped arriving) before the sample is taken.
        receiver.settle(0, requests);
        let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
        let s = Sample {
            at_s: started.elapsed().as_secs(),
            rss_kib: rss_kib(agent.pid())?,
            receiver_rss_kib: rss_kib(receiver.proc.pid())?,
            requests,
            spans: receiver.server_spans(),
            tables: table_sizes(&log),
        };
        eprintln!(
            "soak: {:>5} s  rss {:.1} MB  requests {}  spans {}  {}",
            s.at_s,
            s.rss_kib as f64 / 1024.0,
            s.requests,
            s.spans,
            s.tables.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        );
        samples.push(s);
    }
    let peak_kib = agent.peak_rss_kib()?;
    let stop = agent.stop()?;
    let last = samples.last().context("no sample")?;

    // Verdicts, after a warm-up of a tenth of the run (at least one sample).
    let warm = (samples.len() / 10).max(1).min(samples.len().saturating_sub(1));
    let steady = &samples[warm..];
    let mut failures = Vec::new();
    let lost = last.requests as i64 - last.spans as i64;
    if lost != 0 {
        failures.push(format!("{lost} of {} requests did not come back as spans", last.requests));
    }
    let rss: Vec<u64> = steady.iter().map(|s| s.rss_kib).collect();
    if let Some((a, b)) = grows(&rss, 0.05, 1024) {
        failures.push(format!("resident memory grew: {:.1} MB -> {:.1} MB", a as f64 / 1024.0, b as f64 / 1024.0));
    }
    let names: BTreeSet<&String> = samples.iter().flat_map(|s| s.tables.keys()).collect();
    for name in &names {
        let series: Vec<u64> = steady.iter().map(|s| s.tables.get(*name).copied().unwrap_or(0)).collect();
        if let Some((a, b)) = grows(&series, 0.10, 64) {
            failures.push(format!("{name} grew: {a} -> {b} entries"));
        }
    }

    let mut md = String::new();
    let _ = writeln!(md, "# Soak run\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench --soak {seconds} --soak-rate {rate}` (source: `xtask/src/bench/soak.rs`); do not edit by hand.\n"
    );
    let _ = writeln!(
        md,
        "* Machine: {} CPUs ({}), {:.1} GiB memory, kernel {}",
        machine.cpus, machine.cpu_model, machine.mem_gib, machine.kernel
    );
    let _ = writeln!(md, "* Date: {}", machine.date);
    let _ = writeln!(
        md,
        "* Load: the Go fixture traced by `tracer run --pid` (same-host), {rate} req/s open loop on {FIXED_CONNECTIONS} \
         keep-alive connections, new connections every minute; spans exported over OTLP/gRPC to the project's receiver."
    );
    let _ = writeln!(
        md,
        "* Scheduling: the soak's processes (agent, fixture, load, receiver) ran at nice {}; load average (1 min) {} at the start, {} at the end",
        own_nice(),
        load_at_start,
        load_average()
    );
    let _ = writeln!(
        md,
        "* Requests: {} ({} errors); spans received: {}; kernel events lost: {}; spans dropped: {}",
        last.requests, errors, last.spans, stop.kernel_lost, stop.spans_dropped
    );
    let _ = writeln!(
        md,
        "* Agent resident memory: first sample {:.1} MB, last {:.1} MB, peak (VmHWM) {:.1} MB\n",
        samples[0].rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "Verdict: {} (checks: every request a span; the largest resident memory of the last third of the run within 5 % + 1 MB \
         of the first third's, after a warm-up of a tenth; likewise every table within 10 % + 64 entries).\n",
        if failures.is_empty() { "PASS".to_string() } else { format!("FAIL: {}", failures.join("; ")) }
    );
    let _ = writeln!(
        md,
        "| minute | RSS MB | receiver RSS MB | requests | spans | {} |",
        names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: |{}", " ---: |".repeat(names.len()));
    let every = (samples.len() / 30).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % every != 0 && i + 1 != samples.len() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {} | {} | {} |",
            s.at_s.div_ceil(60),
            s.rss_kib as f64 / 1024.0,
            s.receiver_rss_kib as f64 / 1024.0,
            s.requests,
            s.spans,
            names.iter().map(|n| s.tables.get(*n).copied().unwrap_or(0).to_string()).collect::<Vec<_>>().join(" | ")
        );
    }
    let docs = crate::root().join("docs");
    std::fs::create_dir_all(&docs)?;
    std::fs::write(docs.join("soak.md"), &md).context("writing docs/soak.md")?;
    println!("{md}");
    if failures.is_empty() {
        eprintln!("soak: PASS (wrote docs/soak.md)");
        Ok(())
    } else {
        bail!("soak failed: {}", failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_table_sizes_from_the_agent_log() {
        let log = "x DEBUG tracer_user::agent] kernel tables CONNS=12/65536 ARGS=0/16384\n\
                   y DEBUG tracer_user::agent] pipeline PipelineStats { protocols: ProtocolStats { spans_emitted: 5, parse_errors: 0 }, streams: StreamsStats { evictions: 0, connections: 33 }, correlator: CorrelatorStats { received: 9, emitted: 9, pending: 4, nodes: 120, thread_links: 0 } }\n";
        let t = table_sizes(log);
        assert_eq!(t["kernel CONNS"], 12);
        assert_eq!(t["kernel ARGS"], 0);
        assert_eq!(t["streams connections"], 33);
        assert_eq!(t["correlator nodes"], 120);
        assert_eq!(t["correlator pending"], 4);
    }

    #[test]
    fn growth_is_last_third_against_first_third() {
        assert_eq!(grows(&[10, 11, 10, 11, 10, 11], 0.10, 0), None);
        assert_eq!(grows(&[10, 11, 12, 13, 14, 20], 0.10, 0), Some((11, 20)));
        assert_eq!(grows(&[10, 11], 0.10, 0), None);
        // The absolute slack absorbs small tables' noise.
        assert_eq!(grows(&[0, 1, 0, 3, 2, 40], 0.10, 64), None);
    }
}
