//! Privileged end-to-end tests of the messaging protocols: real NATS and RabbitMQ brokers
//! (Debian's packages), started here on their own ports in temporary directories, real client
//! libraries in two languages (nats-py and nats.go; pika and amqp091-go), and an HTTP service
//! (traced) whose handler publishes, consumes and fetches messages. Publishes are PRODUCER
//! spans (children of the handler's server span), deliveries CONSUMER spans starting traces of
//! their own, fetches CLIENT spans; named and attributed after OpenTelemetry's messaging
//! conventions, with the broker's refusals as errors, and no payload or header anywhere. Run
//! as root with `cargo xtask e2e messaging`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use tracer_tests::backends::{
    Lang, Server, TempDir, fixture, latest_messaging_point, messaging_spans, sorted_names, start_traced, trace_of,
};
use tracer_tests::harness::{curl, free_port, require_root, rt, wait_until};
use tracer_tests::receiver::{ReceivedPoint, ReceivedSpan, Receiver, SpanKind, StatusCode};
use tracer_tests::scenarios::{int_attr, str_attr};

const WAIT: Duration = Duration::from_secs(30);
/// A value the fixtures put in payloads and headers; it must never be exported.
const SECRET: &str = "secret-literal-4242";
/// RabbitMQ's own start (an Erlang VM) takes seconds, more on a loaded machine.
const BROKER_START: Duration = Duration::from_secs(120);

/// nats-server (Debian's 2.9), plain TCP, no authentication.
fn nats_server() -> Server {
    let dir = TempDir::new("nats");
    let port = free_port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (scripts/setup.sh installs it)");
    let server = Server::new(child, port, libc::SIGKILL, dir);
    wait_until("nats-server greets with INFO", WAIT, || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).is_ok() && &buf == b"INFO "
    })
    .expect("nats-server ready");
    server
}

/// NATS: the service publishes two messages to `orders.created` (one with a header), makes one
/// request to `svc.echo` that its own queue subscription answers, and is delivered both
/// messages, the request and the reply. Each publish is a PRODUCER span, each delivery a
/// CONSUMER span starting a trace of its own; payloads, headers and reply inboxes are never
/// exported.
fn run_nats(lang: Lang, service_name: &str) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let nats = nats_server();
    let port = nats.port.to_string();
    let cmd = fixture(lang, "nats_service.py", "natssvc", service_name, &[("nats-port", &port)]);
    let (service, agent) = start_traced(lang, service_name, cmd, &rx);
    for path in ["/connect", "/publish"] {
        assert_eq!(curl(&[&service.url(path)]).expect(path), "ok", "{path}");
    }
    let done = |spans: &[ReceivedSpan]| {
        messaging_spans(spans, "nats").len() >= 8
            && spans.iter().any(|s| s.kind == SpanKind::Server && str_attr(s, "url.path") == Some("/publish"))
    };
    rt.block_on(rx.wait_for(|s| done(s), WAIT)).unwrap_or_else(|e| panic!("{e}: {:#?}", rx.spans()));
    // messaging.client.operation.duration: four publishes and four deliveries, by system and
    // operation, never by subject (cumulative: the latest point of each series).
    let latest = |points: &[ReceivedPoint], op: &str| latest_messaging_point(points, service_name, op, None);
    let points = rt
        .block_on(rx.wait_for_points(
            |p| {
                latest(p, "publish").is_some_and(|p| p.count == 4) && latest(p, "receive").is_some_and(|p| p.count == 4)
            },
            WAIT,
        ))
        .unwrap_or_else(|e| panic!("messaging metrics: {e}"));
    for op in ["publish", "receive"] {
        let p = latest(&points, op).expect(op);
        assert_eq!(p.attr_str("messaging.system").as_deref(), Some("nats"), "{p:?}");
        let ty = if op == "publish" { "send" } else { "receive" };
        assert_eq!(p.attr_str("messaging.operation.type").as_deref(), Some(ty), "{p:?}");
        assert!(p.attributes.keys().all(|k| !k.starts_with("messaging.destination")), "{p:?}");
    }
    agent.stop().expect("agent stops cleanly");
    let spans = rx.spans();
    for s in &spans {
        let text = format!("{:?} {:?}", s.name, s.attributes);
        assert!(!text.contains(SECRET) && !text.contains("pong"), "a payload was exported: {s:#?}");
        assert!(!text.contains("_INBOX.") || text.contains("_INBOX.>"), "an inbox was exported: {s:#?}");
    }
    let all = messaging_spans(&spans, "nats");
    let (server, _) = trace_of(&spans, "/publish");
    let producers: Vec<&ReceivedSpan> = all.iter().filter(|s| s.kind == SpanKind::Producer).collect();
    let consumers: Vec<&ReceivedSpan> = all.iter().filter(|s| s.kind == SpanKind::Consumer).collect();
    assert_eq!(all.len(), producers.len() + consumers.len(), "{all:#?}");
    // Publishes: two to orders.created, the request, and the reply the subscription sends.
    let mut want = vec!["publish _INBOX.>", "publish orders.created", "publish orders.created", "publish svc.echo"];
    want.sort_unstable();
    assert_eq!(sorted_names(&producers), want, "{producers:#?}");
    // Deliveries: both orders, the request (to the queue group) and the reply.
    let mut want = vec!["receive _INBOX.>", "receive orders.created", "receive orders.created", "receive svc.echo"];
    want.sort_unstable();
    assert_eq!(sorted_names(&consumers), want, "{consumers:#?}");
    for s in &all {
        let (op, ty) = if s.kind == SpanKind::Producer { ("publish", "send") } else { ("receive", "receive") };
        assert_eq!(str_attr(s, "messaging.operation.name"), Some(op));
        assert_eq!(str_attr(s, "messaging.operation.type"), Some(ty));
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(nats.port)));
        assert_eq!(str_attr(s, "server.address"), Some("127.0.0.1"));
        assert_eq!(s.status_code, StatusCode::Unset, "{s:#?}");
        assert_eq!(s.resource.get("service.name"), server.resource.get("service.name"));
        if s.name.ends_with("_INBOX.>") {
            assert_eq!(s.attr("messaging.destination.name"), None, "{s:#?}");
            assert_eq!(str_attr(s, "messaging.destination.template"), Some("_INBOX.>"));
            assert!(matches!(s.attr("messaging.destination.temporary"), Some(v) if v.to_json() == true), "{s:#?}");
            assert_eq!(int_attr(s, "messaging.message.body.size"), Some(4), "\"pong\": {s:#?}");
        } else {
            let subject = s.name.split_once(' ').map(|(_, d)| d);
            assert_eq!(str_attr(s, "messaging.destination.name"), subject, "{s:#?}");
            assert_eq!(
                int_attr(s, "messaging.message.body.size"),
                Some(SECRET.len() as i64),
                "headers excluded: {s:#?}"
            );
        }
        let group = (s.name == "receive svc.echo").then_some("workers");
        assert_eq!(str_attr(s, "messaging.consumer.group.name"), group, "{s:#?}");
    }
    // A delivery starts a trace of its own: the reading thread serves no request.
    for c in &consumers {
        assert_eq!(c.parent_span_id, None, "{c:#?}");
        assert_ne!(c.trace_id, server.trace_id, "{c:#?}");
    }
    // The handler's publishes are children of its server span. Python's one thread also
    // writes the reply while the request is being handled; nats.go's subscription handler
    // runs on a goroutine of its own that serves no request, so its reply starts a trace.
    let (children, roots): (Vec<&ReceivedSpan>, Vec<&ReceivedSpan>) =
        producers.iter().partition(|s| s.parent_span_id.as_deref() == Some(server.span_id.as_str()));
    for c in &children {
        assert_eq!(c.trace_id, server.trace_id);
        assert!(c.start_unix_nano >= server.start_unix_nano && c.end_unix_nano <= server.end_unix_nano + 1_000_000);
    }
    let mut want = vec!["publish orders.created", "publish orders.created", "publish svc.echo"];
    match lang {
        Lang::Python => {
            want.push("publish _INBOX.>");
            assert!(roots.is_empty(), "{roots:#?}");
        }
        Lang::Go => {
            assert_eq!(sorted_names(&roots), ["publish _INBOX.>"], "{roots:#?}");
            assert_eq!(roots[0].parent_span_id, None, "{roots:#?}");
        }
    }
    want.sort_unstable();
    assert_eq!(sorted_names(&children), want, "{children:#?}");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn messaging_nats_python_nats_py() {
    run_nats(Lang::Python, "py-nats");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn messaging_nats_go_nats_go() {
    run_nats(Lang::Go, "go-nats");
}

/// RabbitMQ (Debian's 3.10), a node of its own: its own name, AMQP and distribution ports,
/// data, log and cookie directory, no plugins; the default `guest` user from 127.0.0.1. Started
/// in a process group of its own (the Erlang VM starts helpers), all killed on drop.
fn rabbitmq_server() -> Server {
    let dir = TempDir::new("rabbitmq");
    let port = free_port();
    let d = |name: &str| dir.0.join(name);
    std::fs::write(d("enabled_plugins"), "[].\n").expect("plugins file");
    let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
        .env("HOME", &dir.0)
        .env("RABBITMQ_NODENAME", format!("tracer-e2e-{port}@localhost"))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", free_port().to_string())
        .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
        .env("RABBITMQ_LOG_BASE", d("log"))
        .env("RABBITMQ_PID_FILE", d("pid"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("rabbitmq-server (scripts/setup.sh installs it)");
    let mut server = Server::new(child, port, libc::SIGKILL, dir);
    server.group = true;
    wait_until("RabbitMQ answers the protocol header with connection.start", BROKER_START, || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 11];
        // A method frame on channel 0: class 10 (connection), method 10 (start).
        s.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && buf[..3] == [1, 0, 0]
            && buf[7..11] == [0, 10, 0, 10]
    })
    .expect("RabbitMQ ready");
    server
}

/// The service handles GET /connect (one connection: a publishing channel in confirm mode and
/// a consuming one on `orders.q`), then GET /publish: two confirmed publishes to `orders.q`, a
/// mandatory one to `nowhere` that the broker returns, a publish to `jobs.q` fetched back with
/// `basic.get`, and both `orders.q` deliveries awaited. Exactly seven spans come of it.
fn run_amqp(lang: Lang, service_name: &str) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let broker = rabbitmq_server();
    let port = broker.port.to_string();
    let cmd = fixture(lang, "amqp_service.py", "amqpsvc", service_name, &[("amqp-port", &port)]);
    let (service, agent) = start_traced(lang, service_name, cmd, &rx);
    for path in ["/connect", "/publish"] {
        assert_eq!(curl(&[&service.url(path)]).expect(path), "ok", "{path}");
    }
    let done = |spans: &[ReceivedSpan]| {
        messaging_spans(spans, "rabbitmq").len() >= 7
            && spans.iter().any(|s| s.kind == SpanKind::Server && str_attr(s, "url.path") == Some("/publish"))
    };
    rt.block_on(rx.wait_for(|s| done(s), WAIT)).unwrap_or_else(|e| panic!("{e}: {:#?}", rx.spans()));
    // messaging.client.operation.duration: three publishes taken, one refused (`no-route`),
    // three receives (two deliveries and a fetch); never by destination.
    let latest =
        |points: &[ReceivedPoint], op: &str, e: Option<&str>| latest_messaging_point(points, service_name, op, e);
    let counts = [("publish", None, 3), ("publish", Some("no-route"), 1), ("receive", None, 3)];
    let points = rt
        .block_on(rx.wait_for_points(
            |p| counts.iter().all(|(op, e, n)| latest(p, op, *e).is_some_and(|p| p.count == *n)),
            WAIT,
        ))
        .unwrap_or_else(|e| panic!("messaging metrics: {e}"));
    for (op, e, _) in counts {
        let p = latest(&points, op, e).expect(op);
        assert_eq!(p.attr_str("messaging.system").as_deref(), Some("rabbitmq"), "{p:?}");
        assert!(p.attributes.keys().all(|k| !k.starts_with("messaging.destination")), "{p:?}");
    }
    agent.stop().expect("agent stops cleanly");
    let spans = rx.spans();
    for s in &spans {
        let text = format!("{:?} {:?}", s.name, s.attributes);
        assert!(!text.contains(SECRET) && !text.contains("token"), "a payload or header was exported: {s:#?}");
    }
    let all = messaging_spans(&spans, "rabbitmq");
    assert_eq!(all.len(), 7, "exactly seven spans: {all:#?}");
    let (server, _) = trace_of(&spans, "/publish");
    let of = |k: SpanKind| -> Vec<&ReceivedSpan> { all.iter().filter(|s| s.kind == k).collect() };
    let (producers, consumers, fetches) = (of(SpanKind::Producer), of(SpanKind::Consumer), of(SpanKind::Client));
    assert_eq!(
        sorted_names(&producers),
        ["publish jobs.q", "publish nowhere", "publish orders.q", "publish orders.q"],
        "{producers:#?}"
    );
    assert_eq!(sorted_names(&consumers), ["receive orders.q", "receive orders.q"], "{consumers:#?}");
    assert_eq!(sorted_names(&fetches), ["receive jobs.q"], "{fetches:#?}");
    for s in &all {
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(broker.port)), "{s:#?}");
        assert_eq!(str_attr(s, "server.address"), Some("127.0.0.1"));
        assert_eq!(s.resource.get("service.name"), server.resource.get("service.name"));
        let destination = s.name.split_once(' ').map(|(_, d)| d);
        assert_eq!(str_attr(s, "messaging.destination.name"), destination, "{s:#?}");
        let ty = if s.kind == SpanKind::Producer { "send" } else { "receive" };
        assert_eq!(str_attr(s, "messaging.operation.type"), Some(ty), "{s:#?}");
        assert_eq!(int_attr(s, "messaging.message.body.size"), Some(SECRET.len() as i64), "{s:#?}");
    }
    // Publishes and the fetch are the handler's calls: children of its server span, inside it.
    for s in producers.iter().chain(&fetches) {
        assert_eq!(s.parent_span_id.as_deref(), Some(server.span_id.as_str()), "parent of {s:#?}");
        assert_eq!(s.trace_id, server.trace_id);
        assert!(s.start_unix_nano >= server.start_unix_nano && s.end_unix_nano <= server.end_unix_nano + 1_000_000);
        let refused = s.name == "publish nowhere";
        assert_eq!(str_attr(s, "error.type"), refused.then_some("no-route"), "{s:#?}");
        assert_eq!(s.status_code, if refused { StatusCode::Error } else { StatusCode::Unset }, "{s:#?}");
        let key = s.name.split_once(' ').map(|(_, d)| d);
        assert_eq!(str_attr(s, "messaging.rabbitmq.destination.routing_key"), key, "{s:#?}");
    }
    // The fetch's delivery tag: the first message delivered on the publishing channel.
    assert_eq!(int_attr(fetches[0], "messaging.rabbitmq.message.delivery_tag"), Some(1), "{fetches:#?}");
    // Deliveries start traces of their own, through the consumer's subscription, tags 1 and 2.
    let mut tags: Vec<Option<i64>> =
        consumers.iter().map(|c| int_attr(c, "messaging.rabbitmq.message.delivery_tag")).collect();
    tags.sort_unstable();
    assert_eq!(tags, [Some(1), Some(2)], "{consumers:#?}");
    for c in &consumers {
        assert_eq!(c.parent_span_id, None, "{c:#?}");
        assert_ne!(c.trace_id, server.trace_id, "{c:#?}");
        assert_eq!(str_attr(c, "messaging.destination.subscription.name"), Some("orders.q"), "{c:#?}");
        assert_eq!(c.status_code, StatusCode::Unset, "{c:#?}");
    }
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn messaging_amqp_python_pika() {
    run_amqp(Lang::Python, "py-amqp");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn messaging_amqp_go_amqp091() {
    run_amqp(Lang::Go, "go-amqp");
}
