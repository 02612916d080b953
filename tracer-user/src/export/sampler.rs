//! Head sampling of exported spans, configured like an OpenTelemetry SDK's:
//! `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
//! `parentbased_always_off`, `parentbased_traceidratio`) and `OTEL_TRACES_SAMPLER_ARG` (the
//! ratio, 0 to 1, default 1).
//!
//! The decision is a function of the trace id alone, computed as the OpenTelemetry SDKs'
//! `TraceIdRatioBased` does (the last eight bytes of the id, big-endian, shifted right by one,
//! below `ratio × 2⁶³`): every span of a trace gets the same decision, on every agent and in
//! every SDK sampling at the same ratio, so a trace is kept or dropped whole. For the same reason
//! a parent-based sampler decides as its root sampler does: the parent of one of the agent's spans
//! was decided on the same trace id (the sampled flag of a `traceparent` header sent by an SDK is
//! not consulted). Only export is sampled: metrics count every request, and `tracer watch` sees
//! every span. Spans sampled out are counted (`spans_sampled_out` in the agent's summary).
//!
//! With tail sampling ([`super::tail`]) this sampler decides only the traces that have neither a
//! failed nor a slow span, once they were held.

use crate::model::TraceId;

/// Which traces are exported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sampler {
    #[default]
    AlwaysOn,
    AlwaysOff,
    /// Keeps a trace when the last eight bytes of its id, big-endian, shifted right by one, are
    /// below this bound (`ratio × 2⁶³`).
    Ratio {
        bound: u64,
    },
}

impl Sampler {
    /// A sampler keeping `ratio` of traces (clamped to 0..=1).
    pub fn ratio(ratio: f64) -> Self {
        if ratio >= 1.0 {
            Self::AlwaysOn
        } else if ratio > 0.0 {
            Self::Ratio { bound: (ratio * (1u64 << 63) as f64) as u64 }
        } else {
            Self::AlwaysOff
        }
    }

    /// Whether the trace is exported.
    pub fn keeps(&self, trace: &TraceId) -> bool {
        match *self {
            Self::AlwaysOn => true,
            Self::AlwaysOff => false,
            Self::Ratio { bound } => {
                let low = u64::from_be_bytes(trace.0[8..].try_into().expect("eight bytes"));
                (low >> 1) < bound
            }
        }
    }

    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`. As the OpenTelemetry
    /// specification asks, a value that cannot be used is reported (the `Err` half: what to
    /// warn) and the default is used in its place: every trace for an unknown sampler, a ratio
    /// of 1 for a ratio that is not a number from 0 to 1.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> (Self, Option<String>) {
        let name = lookup("OTEL_TRACES_SAMPLER").map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty());
        let Some(name) = name else { return (Self::AlwaysOn, None) };
        let ratio = || match lookup("OTEL_TRACES_SAMPLER_ARG").map(|s| s.trim().to_owned()) {
            None => (Self::AlwaysOn, None),
            Some(arg) => match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => (Self::ratio(r), None),
                _ => (
                    Self::AlwaysOn,
                    Some(format!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio from 0 to 1; keeping every trace")),
                ),
            },
        };
        match name.as_str() {
            "always_on" | "parentbased_always_on" => (Self::AlwaysOn, None),
            "always_off" | "parentbased_always_off" => (Self::AlwaysOff, None),
            "traceidratio" | "parentbased_traceidratio" => ratio(),
            _ => (
                Self::AlwaysOn,
                Some(format!(
                    "OTEL_TRACES_SAMPLER={name:?} is not a sampler the agent knows (always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio); \
                     keeping every trace"
                )),
            ),
        }
    }

    /// From the agent's environment, warning about what cannot be used.
    pub fn from_env() -> Self {
        let (s, warning) = Self::from_lookup(|k| std::env::var(k).ok());
        if let Some(w) = warning {
            log::warn!("{w}");
        }
        s
    }

    /// What the sampler keeps, for the start-up log.
    pub fn describe(&self) -> String {
        match *self {
            Self::AlwaysOn => "every trace".into(),
            Self::AlwaysOff => "no trace".into(),
            Self::Ratio { bound } => format!("{:.4} of traces, by trace id", bound as f64 / (1u64 << 63) as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn parses_the_sdk_variables() {
        assert_eq!(Sampler::from_lookup(env(&[])), (Sampler::AlwaysOn, None));
        assert_eq!(Sampler::from_lookup(env(&[("OTEL_TRACES_SAMPLER", "always_off")])), (Sampler::AlwaysOff, None));
        assert_eq!(
            Sampler::from_lookup(env(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")])),
            (Sampler::AlwaysOff, None)
        );
        assert_eq!(
            Sampler::from_lookup(env(&[("OTEL_TRACES_SAMPLER", "TraceIdRatio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")])),
            (Sampler::ratio(0.25), None)
        );
        assert_eq!(
            Sampler::from_lookup(env(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0")
            ])),
            (Sampler::AlwaysOff, None)
        );
        // Without an argument the ratio is 1.
        assert_eq!(Sampler::from_lookup(env(&[("OTEL_TRACES_SAMPLER", "traceidratio")])), (Sampler::AlwaysOn, None));
        let (s, w) =
            Sampler::from_lookup(env(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")]));
        assert_eq!(s, Sampler::AlwaysOn);
        assert!(w.unwrap().contains("OTEL_TRACES_SAMPLER_ARG=\"1.5\""));
        let (s, w) = Sampler::from_lookup(env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]));
        assert_eq!(s, Sampler::AlwaysOn);
        assert!(w.unwrap().contains("\"jaeger_remote\""));
    }

    /// The decision of the OpenTelemetry SDKs' TraceIdRatioBased sampler, for trace ids chosen
    /// at the edges of the bound.
    #[test]
    fn ratio_decides_on_the_low_eight_bytes_like_the_sdks() {
        let s = Sampler::ratio(0.5);
        let id = |low: u64| {
            let mut t = [0xffu8; 16];
            t[8..].copy_from_slice(&low.to_be_bytes());
            TraceId(t)
        };
        // bound = 2^62: kept iff (low >> 1) < 2^62, i.e. low < 2^63.
        assert!(s.keeps(&id(0)));
        assert!(s.keeps(&id((1 << 63) - 1)));
        assert!(!s.keeps(&id(1 << 63)));
        assert!(!s.keeps(&id(u64::MAX)));
        // The first eight bytes do not matter.
        let mut t = id(5).0;
        t[..8].copy_from_slice(&[0; 8]);
        assert!(s.keeps(&TraceId(t)));
    }

    #[test]
    fn ratio_keeps_its_share_of_random_traces() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for ratio in [0.01, 0.1, 0.25, 0.5, 0.9] {
            let s = Sampler::ratio(ratio);
            let n = 200_000;
            let kept = (0..n).filter(|_| s.keeps(&TraceId(rng.random()))).count();
            let share = kept as f64 / n as f64;
            assert!((share - ratio).abs() < 0.005, "ratio {ratio}: kept {share}");
        }
        assert!(!Sampler::AlwaysOff.keeps(&TraceId([1; 16])));
        assert!(Sampler::AlwaysOn.keeps(&TraceId([1; 16])));
    }
}
