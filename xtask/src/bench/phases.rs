//! `cargo xtask bench --phases-rounds N`: what the phase span events cost, in rounds.
//!
//! One comparison of two runs cannot price something this small: the agent's CPU per request
//! moves by several per cent from run to run on a 2-CPU machine. So each round runs the same
//! server twice, same-host with the phase events and same-host with `TRACER_PHASES=false`,
//! back to back and in alternating order (ABBA: a drift of the machine over time falls on both
//! sides), at 5,000 req/s and at saturation, on the load's keep-alive connections. A round
//! gives one paired difference per load. The cost counts as measurable only when every round
//! agrees on its sign (for 5 rounds, a chance of 1 in 16 when there is no difference).
//!
//! Each run is measured again while other processes or steal disturbed it (as the main bench
//! does: `least_disturbed_run`). Rounds still cannot price a cost of a few per cent on a machine
//! whose steal time comes and goes:
//! one round's difference moves by tens of per cent. So the agent's data path is also run
//! alone (`tracer-user/examples/span_cost.rs`: the same load's events, its CPU time), which
//! prices the events in nanoseconds. The budget: a median paired difference of at most +5 % at
//! every load, and the data path's cost of the events at most 5 % of the agent's CPU per
//! request. Writes docs/phases-cost.md.

use super::*;

/// The figures of one run (one mode of one round).
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Agent CPU µs per request at 5,000 req/s, and at saturation.
    cpu_us: [Option<f64>; 2],
    /// Requests per second at saturation.
    saturation_rps: f64,
}

const LOADS: [Phase; 2] = [Phase::Fixed(BUDGET_RATE), Phase::Saturation];
const BUDGET: f64 = 0.05;

struct ServerRounds {
    kind: ServerKind,
    /// Per round: (with the phase events, without).
    rounds: Vec<(Sample, Sample)>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The paired relative differences `(with - without) / without`.
fn differences(pairs: &[(f64, f64)]) -> Vec<f64> {
    pairs.iter().filter(|(_, b)| *b > 0.0).map(|(a, b)| (a - b) / b).collect()
}

/// Whether the differences say there is a cost (or a saving): every one of at least
/// `MIN_ROUNDS` has the same sign.
fn measurable(d: &[f64]) -> bool {
    const MIN_ROUNDS: usize = 5;
    d.len() >= MIN_ROUNDS && (d.iter().all(|x| *x > 0.0) || d.iter().all(|x| *x < 0.0))
}

pub fn phases_cost(args: &BenchArgs, rounds: usize) -> Result<()> {
    let servers = if args.servers.is_empty() { vec![ServerKind::Go, ServerKind::Nginx] } else { args.servers.clone() };
    let plan = Plan {
        servers: servers.clone(),
        modes: vec![Mode::SameHost, Mode::NoPhases],
        phases: LOADS.to_vec(),
        decode_at_fixed_rates: false,
        ..Plan::from_args(args)
    };
    let started = Instant::now();
    let data_path = data_path_cost()?;
    let tools = Tools::for_args(&plan, args)?;
    let tmp = TempDir::new()?;
    let mut results = Vec::new();
    for &kind in &servers {
        let mut pairs = Vec::new();
        for round in 0..rounds {
            let order =
                if round % 2 == 0 { [Mode::SameHost, Mode::NoPhases] } else { [Mode::NoPhases, Mode::SameHost] };
            let mut got = [None, None];
            for mode in order {
                let label = format!("bench phases: round {} of {rounds}", round + 1);
                let run = least_disturbed_run(&tools, &plan, kind, mode, &tmp.path, &label)?;
                let sample = Sample {
                    cpu_us: LOADS.map(|ph| run.phase(ph).and_then(PhaseResult::cpu_us_per_request)),
                    saturation_rps: run.phase(Phase::Saturation).map_or(0.0, |p| p.load.rate),
                };
                got[usize::from(mode == Mode::NoPhases)] = Some(sample);
            }
            if let [Some(with), Some(without)] = got {
                pairs.push((with, without));
            }
        }
        results.push(ServerRounds { kind, rounds: pairs });
    }
    let report = render(&results, &data_path, rounds, plan.duration, &Machine::read(), started.elapsed());
    let path = crate::root().join("docs/phases-cost.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("{report}");
    eprintln!("bench phases: wrote docs/phases-cost.md ({:.1} min)", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// The requests and rounds of the data-path run.
const DATA_PATH_RUN: [&str; 2] = ["20000", "40"];

/// The data path's own figures (`tracer-user/examples/span_cost.rs`): its output lines.
struct DataPath {
    lines: Vec<String>,
    /// The median paired difference, ns per request.
    paired_ns: f64,
}

fn data_path_cost() -> Result<DataPath> {
    crate::run(crate::cargo().args(["build", "--release", "-p", "tracer-user", "--example", "span_cost"]))?;
    let bin = crate::root().join("target/release/examples/span_cost");
    let out = Command::new(&bin).args(DATA_PATH_RUN).output().with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{} failed ({}): {text}{}", bin.display(), out.status, String::from_utf8_lossy(&out.stderr));
    }
    let paired_ns = text
        .lines()
        .find_map(|l| l.strip_prefix("paired difference: median "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no paired difference in the output of {}:\n{text}", bin.display()))?;
    eprintln!("bench phases: data path\n{text}");
    Ok(DataPath { lines: text.lines().map(str::to_owned).collect(), paired_ns })
}

fn render(
    results: &[ServerRounds],
    data_path: &DataPath,
    rounds: usize,
    duration: u64,
    m: &Machine,
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# What the phase span events cost\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench --phases-rounds {rounds}` on {} ({} CPUs, {:.1} GiB, {}, Linux {}), {:.0} \
         min. Each round runs the server twice with the agent in same-host mode, with the phase span events and \
         with `TRACER_PHASES=false`, in alternating order, {duration} s at 5,000 req/s then {duration} s at \
         saturation (`wrk -t1 -c16`), on keep-alive connections: reused connections, so no `dns`, `connect` or \
         `tls.handshake` event; each SERVER span carries `request.received` and `response.first_byte`. The \
         kernel programs are the same in both runs (the events are made from timestamps the data path records \
         anyway); what differs is the agent's span building and export. The receiver accepts the exports \
         without decoding them at both loads: a decoding receiver shares the two CPUs and its work grows with \
         the exports' size, which is what the two modes differ in, so it would charge its own cost to the \
         agent.\n",
        m.date,
        m.cpus,
        m.mem_gib,
        m.cpu_model,
        m.kernel,
        elapsed.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        s,
        "A difference is *measurable* only when every round has the same sign (5 rounds: a 1 in 16 chance \
         when there is none). Each run is measured again (up to five times, the least disturbed attempt \
         counting) while other processes and the hypervisor's steal took more than 0.15 CPUs during a load. \
         A round's difference still moves by tens of per cent with the machine's steal time, so the rounds \
         alone cannot price a cost of a few per cent; the data path run alone (below) can. The \
         budget: a median paired difference of at most +5 % at every load, and the data path's cost of the \
         events at most 5 % of the agent's CPU per request.\n"
    );
    let _ = writeln!(
        s,
        "| server | load | agent CPU µs/req with (median) | without (median) | paired difference, median \
         [min, max] | measurable | within budget |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        for (i, load) in LOADS.iter().enumerate() {
            let pairs: Vec<(f64, f64)> =
                r.rounds.iter().filter_map(|(a, b)| Some((a.cpu_us[i]?, b.cpu_us[i]?))).collect();
            let d = differences(&pairs);
            let (Some(with), Some(without), Some(mid)) = (
                median(pairs.iter().map(|p| p.0).collect()),
                median(pairs.iter().map(|p| p.1).collect()),
                median(d.clone()),
            ) else {
                continue;
            };
            let lo = d.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = d.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let is = measurable(&d);
            let _ = writeln!(
                s,
                "| {} | {} | {with:.2} | {without:.2} | {:+.1} % [{:+.1}, {:+.1}] | {} | {} |",
                r.kind.name(),
                load.label(),
                mid * 100.0,
                lo * 100.0,
                hi * 100.0,
                if is { "yes" } else { "no" },
                if mid <= BUDGET { "PASS" } else { "FAIL" }
            );
        }
    }
    let per_request_us = results
        .iter()
        .find(|r| r.kind == ServerKind::Go)
        .and_then(|r| median(r.rounds.iter().filter_map(|(_, b)| b.cpu_us[0]).collect()));
    let _ = writeln!(
        s,
        "\nThe data path alone, without the machine's noise (`cargo run --release -p tracer-user --example \
         span_cost {}`): the same keep-alive HTTP/1 load's kernel events through the agent's assembly, \
         correlation, span building and OTLP encoding, on one thread as in the agent, their CPU time, in \
         rounds of the two modes back to back:\n\n```text\n{}\n```\n",
        DATA_PATH_RUN.join(" "),
        data_path.lines.join("\n")
    );
    if let Some(us) = per_request_us {
        let share = data_path.paired_ns / (us * 1000.0);
        let _ = writeln!(
            s,
            "That is {:+.1} % of the agent's whole CPU per request at 5,000 req/s without the events (Go, {us:.2} \
             µs, median above): {}.",
            share * 100.0,
            if share <= BUDGET { "PASS (at most 5 %)" } else { "FAIL (above 5 %)" }
        );
    }
    let _ = writeln!(s, "\nSaturation throughput, with the events against without, per round:\n");
    let _ = writeln!(s, "| server | ratios | median |");
    let _ = writeln!(s, "| --- | --- | --- |");
    for r in results {
        let ratios: Vec<f64> = r
            .rounds
            .iter()
            .filter(|(_, b)| b.saturation_rps > 0.0)
            .map(|(a, b)| a.saturation_rps / b.saturation_rps)
            .collect();
        let list: Vec<String> = ratios.iter().map(|x| format!("{x:.3}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            r.kind.name(),
            list.join(", "),
            median(ratios.clone()).map_or("-".into(), |m| format!("{m:.3}"))
        );
    }
    let _ = writeln!(s, "\nEvery round, agent CPU µs per request (with / without):\n");
    let _ = writeln!(s, "| server | round | 5,000 req/s | saturation | saturation req/s |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    for r in results {
        for (n, (a, b)) in r.rounds.iter().enumerate() {
            let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
            let _ = writeln!(
                s,
                "| {} | {} | {} / {} | {} / {} | {:.0} / {:.0} |",
                r.kind.name(),
                n + 1,
                f(a.cpu_us[0]),
                f(b.cpu_us[0]),
                f(a.cpu_us[1]),
                f(b.cpu_us[1]),
                a.saturation_rps,
                b.saturation_rps
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cost_is_measurable_only_when_every_round_agrees() {
        assert!(measurable(&[0.01, 0.02, 0.03, 0.01, 0.05]));
        assert!(measurable(&[-0.01, -0.02, -0.03, -0.01, -0.05]));
        assert!(!measurable(&[0.01, -0.02, 0.03, 0.01, 0.05]), "one round disagrees");
        assert!(!measurable(&[0.01, 0.02, 0.03, 0.01]), "too few rounds");
        assert!(!measurable(&[0.01, 0.0, 0.03, 0.01, 0.05]), "a tie is no sign");
    }

    #[test]
    fn paired_differences_and_medians() {
        let d = differences(&[(11.0, 10.0), (9.0, 10.0), (5.0, 0.0)]);
        assert_eq!(d.len(), 2, "a pair without a base is left out");
        assert!((d[0] - 0.1).abs() < 1e-9 && (d[1] + 0.1).abs() < 1e-9);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
