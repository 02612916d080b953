//! Privileged end-to-end tests of Kafka: a real Apache Kafka 4.1.1 broker in KRaft mode (from
//! Maven Central, installed by `scripts/setup.sh --tests` into [`KAFKA_DIR`]), started here on
//! its own ports with its own data directory, and a traced HTTP service whose handler produces
//! three records (each acknowledged before the next: offsets 0, 1 and 2 of partition 0) and
//! then consumes them, with kafka-python or franz-go. The agent must export exactly three
//! PRODUCER spans and one CONSUMER span that links to each of them, by (topic, partition,
//! offset) as both sides saw them on the wire — nothing injected — with no payload, key or
//! header anywhere, and count the sends and the receive in the messaging duration histogram.
//! Run as root with `cargo xtask e2e kafka`.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tracer_tests::backends::{Lang, Server, TempDir, fixture, latest_messaging_point, messaging_spans, start_traced};
use tracer_tests::harness::{curl, free_port, require_root, rt, run_ok, wait_until};
use tracer_tests::receiver::{ReceivedPoint, ReceivedSpan, Receiver, SpanKind, StatusCode};
use tracer_tests::scenarios::{int_attr, str_attr};

/// Where `scripts/setup.sh --tests` copies the broker's jars (tests/fixtures/java/kafka-broker).
const KAFKA_DIR: &str = "/opt/tracer-tests/kafka-4.1.1";
const WAIT: Duration = Duration::from_secs(60);
/// What the fixtures put in every record's value, key and header; it must never be exported.
const SECRET: &str = "secret-payload-4242";
const TOPIC: &str = "orders";
/// A fixed cluster id (a base64 UUID, as `kafka-storage random-uuid` prints).
const CLUSTER_ID: &str = "dHJhY2VyLWthZmthLWUyZQ";

/// The broker's own log, for failures.
fn broker_log(broker: &Server) -> String {
    std::fs::read_to_string(broker.dir.0.join("broker.log")).unwrap_or_default()
}

fn java(class: &str) -> Command {
    let mut c = Command::new("java");
    c.arg("-Xmx512m").arg("-cp").arg(format!("{KAFKA_DIR}/*")).arg(class);
    c
}

/// Apache Kafka 4.1.1, one node as broker and controller (KRaft), plain text on 127.0.0.1, with
/// topic [`TOPIC`] (one partition) created before anything is traced.
fn kafka_broker() -> Server {
    assert!(
        Path::new(KAFKA_DIR).join("kafka_2.13-4.1.1.jar").exists(),
        "{KAFKA_DIR} is missing: run scripts/setup.sh --tests"
    );
    let dir = TempDir::new("kafka");
    let (port, controller) = (free_port(), free_port());
    let props = dir.0.join("server.properties");
    let config = format!(
        "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:{controller}\n\
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\ncontroller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\nlog.dirs={}\n\
         num.partitions=1\noffsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\ngroup.initial.rebalance.delay.ms=0\nauto.create.topics.enable=false\n",
        dir.0.join("data").display()
    );
    std::fs::write(&props, config).expect("server.properties");
    run_ok(java("kafka.tools.StorageTool").args(["format", "-t", CLUSTER_ID, "-c"]).arg(&props)).expect("format");
    let log = std::fs::File::create(dir.0.join("broker.log")).expect("broker log");
    let child = java("kafka.Kafka")
        .arg(&props)
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("java (scripts/setup.sh installs it)");
    let broker = Server::new(child, port, libc::SIGKILL, dir);
    wait_until("the broker listens", WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok())
        .unwrap_or_else(|e| panic!("{e}:\n{}", broker_log(&broker)));
    let bootstrap = format!("127.0.0.1:{port}");
    run_ok(java("org.apache.kafka.tools.TopicCommand").args([
        "--bootstrap-server",
        &bootstrap,
        "--create",
        "--topic",
        TOPIC,
        "--partitions",
        "1",
        "--replication-factor",
        "1",
    ]))
    .unwrap_or_else(|e| panic!("create topic: {e}:\n{}", broker_log(&broker)));
    broker
}

fn run(lang: Lang, service_name: &str) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let broker = kafka_broker();
    let port = broker.port.to_string();
    let flags = [("kafka-port", port.as_str()), ("topic", TOPIC)];
    let cmd = fixture(lang, "kafka_service.py", "kafkasvc", service_name, &flags);
    let (service, agent) = start_traced(lang, service_name, cmd, &rx);
    assert_eq!(curl(&[&service.url("/produce-consume")]).expect("/produce-consume"), "ok");
    let kafka = |spans: &[ReceivedSpan]| messaging_spans(spans, "kafka");
    let done = |spans: &[ReceivedSpan]| {
        let k = kafka(spans);
        k.iter().filter(|s| s.kind == SpanKind::Producer).count() >= 3
            && k.iter().any(|s| s.kind == SpanKind::Consumer)
            && spans.iter().any(|s| s.kind == SpanKind::Server && str_attr(s, "url.path") == Some("/produce-consume"))
    };
    rt.block_on(rx.wait_for(|s| done(s), WAIT)).unwrap_or_else(|e| panic!("{e}: {:#?}", rx.spans()));
    // messaging.client.operation.duration: three sends and one receive, by system and
    // operation, never by topic (cumulative: the latest point of each series).
    let latest = |points: &[ReceivedPoint], op: &str| latest_messaging_point(points, service_name, op, None);
    let points = rt
        .block_on(rx.wait_for_points(
            |p| latest(p, "send").is_some_and(|p| p.count == 3) && latest(p, "receive").is_some_and(|p| p.count == 1),
            WAIT,
        ))
        .unwrap_or_else(|e| panic!("messaging metrics: {e}"));
    for (op, ty) in [("send", "send"), ("receive", "receive")] {
        let p = latest(&points, op).expect(op);
        assert_eq!(p.attr_str("messaging.system").as_deref(), Some("kafka"), "{p:?}");
        assert_eq!(p.attr_str("messaging.operation.type").as_deref(), Some(ty), "{p:?}");
        assert!(p.attributes.keys().all(|k| !k.starts_with("messaging.destination")), "{p:?}");
    }
    let log = agent.stop().expect("agent stops cleanly");
    assert!(log.contains("message_links=3 "), "three links counted: {log}");
    let spans = rx.spans();
    for s in &spans {
        let text = format!("{:?} {:?}", s.name, s.attributes);
        assert!(!text.contains(SECRET) && !text.contains("key-"), "a payload, key or header was exported: {s:#?}");
    }
    let all = kafka(&spans);
    let producers: Vec<&ReceivedSpan> = all.iter().filter(|s| s.kind == SpanKind::Producer).collect();
    let consumers: Vec<&ReceivedSpan> = all.iter().filter(|s| s.kind == SpanKind::Consumer).collect();
    assert_eq!(all.len(), 4, "{all:#?}");
    assert_eq!(producers.len(), 3, "{all:#?}");
    assert_eq!(consumers.len(), 1, "{all:#?}");
    for s in &all {
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(broker.port)), "{s:#?}");
        assert_eq!(str_attr(s, "server.address"), Some("127.0.0.1"));
        assert_eq!(str_attr(s, "messaging.destination.name"), Some(TOPIC), "{s:#?}");
        assert_eq!(str_attr(s, "messaging.destination.partition.id"), Some("0"), "{s:#?}");
        assert_eq!(s.status_code, StatusCode::Unset, "{s:#?}");
        assert_eq!(s.attr("error.type"), None, "{s:#?}");
        assert_eq!(s.resource.get("service.name").map(String::as_str), Some(service_name));
    }
    let mut offsets: Vec<i64> =
        producers.iter().map(|s| int_attr(s, "messaging.kafka.offset").expect("offset")).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2], "{producers:#?}");
    for p in &producers {
        assert_eq!(p.name, format!("send {TOPIC}"));
        assert_eq!(str_attr(p, "messaging.operation.name"), Some("send"));
        assert_eq!(str_attr(p, "messaging.operation.type"), Some("send"));
        assert_eq!(int_attr(p, "messaging.batch.message_count"), Some(1), "{p:#?}");
        assert!(p.links.is_empty(), "{p:#?}");
    }
    let c = consumers[0];
    assert_eq!(c.name, format!("receive {TOPIC}"));
    assert_eq!(str_attr(c, "messaging.operation.name"), Some("receive"));
    assert_eq!(str_attr(c, "messaging.operation.type"), Some("receive"));
    assert_eq!(int_attr(c, "messaging.kafka.offset"), Some(0), "{c:#?}");
    assert_eq!(int_attr(c, "messaging.batch.message_count"), Some(3), "{c:#?}");
    // One link to each producer span, with the trace id that span was exported with.
    let links: BTreeSet<(String, String)> = c.links.iter().cloned().collect();
    let sent: BTreeSet<(String, String)> = producers.iter().map(|p| (p.trace_id.clone(), p.span_id.clone())).collect();
    assert_eq!(c.links.len(), 3, "{c:#?}");
    assert_eq!(links, sent, "{c:#?}\n{producers:#?}");
    drop(broker);
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn kafka_python_kafka_python() {
    run(Lang::Python, "py-kafka");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn kafka_go_franz_go() {
    run(Lang::Go, "go-kafka");
}
