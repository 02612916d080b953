//! Privileged end-to-end test of the request metrics on the Prometheus endpoint: known traffic
//! to a traced fixture service (30 OK and 7 failing requests) must show up with exactly these
//! counts, the conventions' labels (no path), a duration sum equal to the exported spans' and
//! the agent's own health; and the same counts over OTLP metrics at the test receiver.

use std::collections::BTreeMap;
use std::time::Duration;
use tracer_tests::harness::{
    Agent, Service, args, curl, free_port, grpc_env, prometheus_samples as samples, require_root, rt, wait_until,
};
use tracer_tests::receiver::{ReceivedPoint, Receiver};

const WAIT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn request_counts_errors_and_durations_on_the_prometheus_endpoint() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let go = Service::go("go-metrics").expect("go server");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut env = grpc_env(&rx);
    env.push(("OTEL_METRIC_EXPORT_INTERVAL", "500".into()));
    let agent =
        Agent::start(&args(&["--pid", &go.pid().to_string(), "--metrics-listen", &listen]), &env).expect("agent");
    let url = format!("http://{listen}/metrics");

    for _ in 0..30 {
        assert_eq!(curl(&[&go.url("/hello")]).unwrap(), "hello");
    }
    for _ in 0..7 {
        assert_eq!(curl(&[&go.url("/status/500")]).unwrap(), "status 500");
    }

    let ok = r#"http_server_request_duration_seconds_count{service_name="go-metrics",http_request_method="GET",http_response_status_code="200"}"#;
    let err = r#"http_server_request_duration_seconds_count{service_name="go-metrics",http_request_method="GET",http_response_status_code="500",error_type="500"}"#;
    let mut last = String::new();
    let res = wait_until("30 OK and 7 failed requests on /metrics", WAIT, || {
        last = curl(&[&url]).unwrap_or_default();
        let s = samples(&last);
        s.get(ok) == Some(&30.0) && s.get(err) == Some(&7.0)
    });
    res.unwrap_or_else(|e| panic!("{e}\n{last}\n{}", agent.log_text()));
    let s = samples(&last);
    // Exactly these two series for the service: no path label, no other status.
    let series: Vec<&String> =
        s.keys().filter(|k| k.starts_with("http_server_request_duration_seconds_count{")).collect();
    assert_eq!(series.len(), 2, "{series:?}");
    assert!(!last.contains("/hello") && !last.contains("/status") && !last.contains("http_route"), "{last}");
    assert!(!s.keys().any(|k| k.starts_with("http_client_request_duration")), "no client spans were made");
    // Buckets are cumulative and end at the count.
    let inf = r#"http_server_request_duration_seconds_bucket{le="+Inf",service_name="go-metrics",http_request_method="GET",http_response_status_code="200"}"#;
    assert_eq!(s.get(inf), Some(&30.0), "{last}");

    // The sum of durations equals the exported spans' (same start and end timestamps).
    let spans = rt
        .block_on(rx.wait_for(|s| s.iter().filter(|s| s.service_name() == Some("go-metrics")).count() >= 37, WAIT))
        .expect("37 spans exported");
    let span_sum: f64 =
        spans.iter().filter(|s| s.service_name() == Some("go-metrics")).map(|s| s.duration().as_secs_f64()).sum();
    let metric_sum = s[&ok.replace("_count", "_sum")] + s[&err.replace("_count", "_sum")];
    assert!((span_sum - metric_sum).abs() < 1e-6, "spans {span_sum} s vs metrics {metric_sum} s");
    let errors =
        spans.iter().filter(|s| s.service_name() == Some("go-metrics") && s.status_code.as_str() == "ERROR").count();
    assert_eq!(errors, 7);

    // The agent's health: spans exported, probes attached, one process traced.
    let mut health = BTreeMap::new();
    wait_until("health metrics to count the exported spans", WAIT, || {
        health = samples(&curl(&[&url]).unwrap_or_default());
        health.get("tracer_spans_exported_total").is_some_and(|v| *v >= 37.0)
    })
    .unwrap_or_else(|e| panic!("{e}: {health:?}"));
    assert_eq!(health.get("tracer_processes_traced"), Some(&1.0), "{health:?}");
    assert!(health.get("tracer_probes_attached").is_some_and(|v| *v >= 10.0), "{health:?}");
    assert!(health.get("tracer_kernel_events_total").is_some_and(|v| *v >= 74.0), "{health:?}");
    assert_eq!(health.get("tracer_kernel_lost_events_total"), Some(&0.0), "{health:?}");
    assert_eq!(health.get("tracer_spans_dropped_total"), Some(&0.0), "{health:?}");
    assert!(health.get("tracer_export_latency_seconds_count").is_some_and(|v| *v >= 1.0), "{health:?}");
    eprintln!(
        "metrics: 30 OK + 7 errors counted; duration sum {metric_sum:.6} s; health {:?}",
        health.iter().filter(|(k, _)| k.starts_with("tracer_") && !k.contains("bucket")).collect::<Vec<_>>()
    );

    // The same counts over OTLP metrics (cumulative: the latest point of each series).
    let latest = |points: &[ReceivedPoint], code: &str| {
        points
            .iter()
            .filter(|p| {
                p.metric == "http.server.request.duration"
                    && p.resource.get("service.name").map(String::as_str) == Some("go-metrics")
                    && p.attr_str("http.response.status_code").as_deref() == Some(code)
            })
            .max_by_key(|p| p.time_unix_nano)
            .cloned()
    };
    let points = rt
        .block_on(rx.wait_for_points(
            |p| latest(p, "200").is_some_and(|p| p.count == 30) && latest(p, "500").is_some_and(|p| p.count == 7),
            WAIT,
        ))
        .expect("OTLP metrics with 30 OK and 7 failed requests");
    let (ok_point, err_point) = (latest(&points, "200").unwrap(), latest(&points, "500").unwrap());
    assert_eq!(ok_point.unit, "s");
    assert_eq!(ok_point.temporality, 2, "cumulative");
    assert_eq!(ok_point.attr_str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(ok_point.attr_str("error.type"), None);
    assert_eq!(err_point.attr_str("error.type").as_deref(), Some("500"));
    assert!(ok_point.attributes.keys().all(|k| !k.contains("url") && k != "http.route"), "{ok_point:?}");
    assert!(!ok_point.resource.contains_key("process.pid"), "per-service resource: {ok_point:?}");
    assert_eq!(ok_point.explicit_bounds.len(), 14);
    assert!((ok_point.sum + err_point.sum - span_sum).abs() < 1e-6, "OTLP sums vs spans");
    assert!(points.iter().all(|p| p.resource.get("service.name").map(String::as_str) == Some("go-metrics")));

    // Not found elsewhere; the agent still stops cleanly.
    assert!(curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://{listen}/other")]).unwrap() == "404");
    agent.stop().expect("agent stops");
}
