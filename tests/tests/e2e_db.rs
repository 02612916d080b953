//! Privileged end-to-end tests of the database protocols: real Redis 7, PostgreSQL 15, MariaDB
//! 10.11 and Memcached 1.6 servers (Debian's packages), started here on their own ports in
//! temporary directories, real client libraries in two languages (redis-py, psycopg 3, PyMySQL
//! and pymemcache; go-redis, pgx, go-sql-driver/mysql and gomemcache), and an HTTP
//! service (traced) whose handlers make a fixed set of calls. Each request's trace must be its
//! server span with exactly the expected CLIENT spans as children, named and attributed after
//! OpenTelemetry's database conventions, with errors where the server refused, and no literal
//! of the user's data anywhere. Run as root with `cargo xtask e2e db`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tracer_tests::harness::{
    Agent, Service, args, curl, fixtures_bin, fixtures_src, free_port, grpc_env, python_bin, require_root, rt, run_ok,
    wait_until,
};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};

const WAIT: Duration = Duration::from_secs(30);
/// A value the fixtures put in SQL literals and Redis arguments; it must never be exported.
const SECRET: &str = "secret-literal-4242";
const PG_USER: &str = "tracer";
const PG_DB: &str = "shop";
/// MariaDB runs with `--skip-grant-tables`: any user, no password.
const MYSQL_USER: &str = "tracer";
const MYSQL_DB: &str = "shop";
/// Commands a Redis client sends when it sets up a connection.
const SETUP: &[&str] = &["HELLO", "CLIENT SETINFO", "CLIENT SETNAME", "CLIENT MAINT_NOTIFICATIONS", "AUTH", "PING"];

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tracer-e2e-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database server, killed on drop.
struct Server {
    child: Child,
    port: u16,
    /// SIGQUIT stops PostgreSQL at once (its backends follow); SIGKILL the rest.
    signal: i32,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, self.signal) };
        let _ = self.child.wait();
    }
}

fn redis_server() -> Server {
    let dir = TempDir::new("redis");
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir.0)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup.sh installs it)");
    let server = Server { child, port, signal: libc::SIGKILL, _dir: dir };
    wait_until("redis-server answers PING", WAIT, || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    })
    .expect("redis ready");
    server
}

fn pg_bin(name: &str) -> PathBuf {
    let p = Path::new("/usr/lib/postgresql/15/bin").join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// PostgreSQL 15 as the `postgres` user (it refuses root), trust authentication, SSL off (so
/// clients with sslmode=prefer are refused SSL and go on in plain text), with database `shop`
/// and table `items`.
fn postgres_server() -> Server {
    let dir = TempDir::new("pg");
    let data = dir.0.join("data");
    run_ok(Command::new("chown").arg("postgres:postgres").arg(&dir.0)).expect("chown");
    let as_postgres = |prog: PathBuf| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(prog);
        c
    };
    run_ok(as_postgres(pg_bin("initdb")).args(["-A", "trust", "-U", PG_USER, "--no-sync", "-D"]).arg(&data))
        .expect("initdb");
    let port = free_port();
    let child = as_postgres(pg_bin("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "ssl=off", "-c", "fsync=off"])
        .arg("-k")
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres");
    let server = Server { child, port, signal: libc::SIGQUIT, _dir: dir };
    let psql = |db: &str, sql: &str| {
        run_ok(Command::new("psql").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            PG_USER,
            "-d",
            db,
            "-c",
            sql,
        ]))
    };
    wait_until("postgres accepts connections", WAIT, || psql("postgres", "SELECT 1").is_ok()).expect("postgres ready");
    psql("postgres", &format!("CREATE DATABASE {PG_DB}")).expect("create database");
    psql(PG_DB, "CREATE TABLE items (name text, n int)").expect("create table");
    server
}

/// MariaDB 10.11 as the `mysql` user, without grant tables (any user logs in, no TLS), with
/// database `shop` and table `items`.
fn mariadb_server() -> Server {
    let dir = TempDir::new("mariadb");
    let data = dir.0.join("data");
    run_ok(Command::new("chown").arg("mysql:mysql").arg(&dir.0)).expect("chown");
    let as_mysql = |prog: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=mysql", "--regid=mysql", "--init-groups", "--", prog]);
        c
    };
    run_ok(
        as_mysql("mariadb-install-db")
            .args(["--no-defaults", "--skip-test-db", "--skip-name-resolve"])
            .arg(format!("--datadir={}", data.display())),
    )
    .expect("mariadb-install-db (scripts/setup.sh installs mariadb-server)");
    let port = free_port();
    let child = as_mysql("/usr/sbin/mariadbd")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.0.join("sock").display()))
        .arg(format!("--pid-file={}", dir.0.join("pid").display()))
        .args([&format!("--port={port}"), "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-log-bin"])
        .args(["--innodb-buffer-pool-size=16M", "--skip-ssl"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd");
    let server = Server { child, port, signal: libc::SIGKILL, _dir: dir };
    let sql = |sql: &str| {
        run_ok(Command::new("mariadb").args(["-h", "127.0.0.1", "-P", &port.to_string(), "-u", MYSQL_USER, "-e", sql]))
    };
    wait_until("mariadb accepts connections", WAIT, || sql("SELECT 1").is_ok()).expect("mariadb ready");
    sql(&format!("CREATE DATABASE {MYSQL_DB}")).expect("create database");
    sql(&format!("CREATE TABLE {MYSQL_DB}.items (name text, n int)")).expect("create table");
    server
}

fn memcached_server() -> Server {
    let dir = TempDir::new("memcached");
    let port = free_port();
    let child = Command::new("memcached")
        .args(["-u", "nobody", "-l", "127.0.0.1", "-U", "0", "-m", "16", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("memcached (scripts/setup.sh installs it)");
    let server = Server { child, port, signal: libc::SIGKILL, _dir: dir };
    wait_until("memcached answers version", WAIT, || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let mut buf = [0u8; 8];
        s.write_all(b"version\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"VERSION "
    })
    .expect("memcached ready");
    server
}

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
    let server = Server { child, port, signal: libc::SIGKILL, _dir: dir };
    wait_until("nats-server greets with INFO", WAIT, || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).is_ok() && &buf == b"INFO "
    })
    .expect("nats-server ready");
    server
}

fn str_attr<'a>(s: &'a ReceivedSpan, k: &str) -> Option<&'a str> {
    s.attr(k).and_then(|v| v.as_str())
}

fn int_attr(s: &ReceivedSpan, k: &str) -> Option<i64> {
    s.attr(k).and_then(|v| v.as_int())
}

/// Which fixture serves the requests.
enum Lang {
    Python,
    Go,
}

struct Setup {
    redis: Server,
    pg: Server,
    mysql: Server,
    memcached: Server,
    service: Service,
}

fn setup(lang: &Lang, service_name: &str) -> Setup {
    let redis = redis_server();
    let pg = postgres_server();
    let mysql = mariadb_server();
    let memcached = memcached_server();
    let mut cmd = match lang {
        Lang::Python => {
            let mut c = Command::new(python_bin());
            c.arg(fixtures_src().join("python/db_server.py"));
            c
        }
        Lang::Go => Command::new(fixtures_bin().join("dbsvc")),
    };
    let dash = match lang {
        Lang::Python => "--",
        Lang::Go => "-",
    };
    cmd.arg(format!("{dash}redis-port"))
        .arg(redis.port.to_string())
        .arg(format!("{dash}pg-port"))
        .arg(pg.port.to_string())
        .arg(format!("{dash}pg-db"))
        .arg(PG_DB)
        .arg(format!("{dash}pg-user"))
        .arg(PG_USER)
        .arg(format!("{dash}mysql-port"))
        .arg(mysql.port.to_string())
        .arg(format!("{dash}mysql-db"))
        .arg(MYSQL_DB)
        .arg(format!("{dash}mysql-user"))
        .arg(MYSQL_USER)
        .arg(format!("{dash}memcached-port"))
        .arg(memcached.port.to_string())
        .env("OTEL_SERVICE_NAME", service_name);
    let service = Service::start(service_name, cmd).expect("db service");
    Setup { redis, pg, mysql, memcached, service }
}

/// The trace of the request to `path`: its server span and every other span of its trace.
fn trace_of<'a>(spans: &'a [ReceivedSpan], path: &str) -> (&'a ReceivedSpan, Vec<&'a ReceivedSpan>) {
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server && str_attr(s, "url.path") == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}: {spans:#?}"));
    let rest = spans.iter().filter(|s| s.trace_id == server.trace_id && s.span_id != server.span_id).collect();
    (server, rest)
}

/// Every client span of the trace is a child of `server`, in its trace.
fn children_of(server: &ReceivedSpan, clients: &[&ReceivedSpan]) {
    for c in clients {
        assert_eq!(c.kind, SpanKind::Client, "{c:#?}");
        assert_eq!(c.parent_span_id.as_deref(), Some(server.span_id.as_str()), "parent of {c:#?}");
        assert_eq!(c.resource.get("service.name"), server.resource.get("service.name"));
        assert!(c.start_unix_nano >= server.start_unix_nano && c.end_unix_nano <= server.end_unix_nano + 1_000_000);
    }
}

fn sorted_names(spans: &[&ReceivedSpan]) -> Vec<String> {
    let mut v: Vec<String> = spans.iter().map(|s| s.name.clone()).collect();
    v.sort();
    v
}

fn no_secret_anywhere(spans: &[ReceivedSpan]) {
    for s in spans {
        let text = format!("{:?} {:?}", s.name, s.attributes);
        assert!(!text.contains(SECRET), "a literal was exported: {s:#?}");
        // The number literal (ports may hold those digits: only the query text is checked).
        assert!(!str_attr(s, "db.query.text").is_some_and(|q| q.contains("4242")), "{s:#?}");
    }
}

fn run(lang: Lang, service_name: &str) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let st = setup(&lang, service_name);
    let pid = st.service.pid();
    let agent = Agent::start(&args(&["--pid", &pid.to_string()]), &grpc_env(&rx)).expect("agent");
    if let Lang::Go = lang {
        wait_until("Go probes attached", WAIT, || agent.log_text().contains(&format!("pid {pid}: Go ")))
            .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log_text()));
    }
    for path in ["/connect", "/redis", "/pg", "/mysql", "/memcached"] {
        assert_eq!(curl(&[&st.service.url(path)]).expect(path), "ok", "{path}");
    }
    // Redis: 10 commands; PostgreSQL and MySQL: 8 statements; Memcached: 6 commands; each trace
    // also has its server span.
    let done = |spans: &[ReceivedSpan]| -> bool {
        let count = |path: &str| {
            spans
                .iter()
                .find(|s| s.kind == SpanKind::Server && str_attr(s, "url.path") == Some(path))
                .map_or(0, |srv| spans.iter().filter(|s| s.trace_id == srv.trace_id).count())
        };
        count("/redis") >= 11 && count("/pg") >= 9 && count("/mysql") >= 9 && count("/memcached") >= 7
    };
    rt.block_on(rx.wait_for(|s| done(s), WAIT)).unwrap_or_else(|e| panic!("{e}: {:#?}", rx.spans()));
    agent.stop().expect("agent stops cleanly");
    let spans = rx.spans();
    no_secret_anywhere(&spans);

    let (server, all_redis) = trace_of(&spans, "/redis");
    assert_eq!(server.status_code, StatusCode::Unset);
    children_of(server, &all_redis);
    // A client library may open a connection inside the handler (go-redis runs a transaction on
    // a connection of its own): its set-up commands are children too, but not counted here.
    let redis: Vec<&ReceivedSpan> = all_redis.iter().copied().filter(|s| !SETUP.contains(&s.name.as_str())).collect();
    // redis-py's incr() sends INCRBY.
    let incr = match lang {
        Lang::Python => "INCRBY",
        Lang::Go => "INCR",
    };
    let mut want = vec!["EXEC", "GET", "GET", "GET", incr, incr, "LPUSH", "MULTI", "SET", "SET"];
    want.sort_unstable();
    assert_eq!(sorted_names(&redis), want, "{redis:#?}");
    for s in &redis {
        assert_eq!(str_attr(s, "db.system.name"), Some("redis"));
        assert_eq!(str_attr(s, "db.operation.name"), Some(s.name.as_str()));
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(st.redis.port)));
        assert_eq!(str_attr(s, "server.address"), Some("127.0.0.1"));
        assert_eq!(s.attr("db.query.text"), None, "Redis arguments are never exported");
        if s.name == "LPUSH" {
            assert_eq!(s.status_code, StatusCode::Error);
            assert_eq!(str_attr(s, "db.response.status_code"), Some("WRONGTYPE"));
        } else {
            assert_eq!(s.status_code, StatusCode::Unset, "{s:#?}");
        }
    }

    let (server, pg) = trace_of(&spans, "/pg");
    children_of(server, &pg);
    let mut want = vec![
        "INSERT items",
        "SELEC",
        "SELECT items",
        "SELECT items",
        "SELECT missing_table",
        "UPDATE items",
        "UPDATE items",
        "UPDATE items",
    ];
    want.sort_unstable();
    assert_eq!(sorted_names(&pg), want, "{pg:#?}");
    for s in &pg {
        assert_eq!(str_attr(s, "db.system.name"), Some("postgresql"));
        assert_eq!(str_attr(s, "db.namespace"), Some(PG_DB), "from the StartupMessage: {s:#?}");
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(st.pg.port)));
        let code = str_attr(s, "db.response.status_code");
        match s.name.as_str() {
            "SELEC" => assert_eq!((code, s.status_code), (Some("42601"), StatusCode::Error)),
            "SELECT missing_table" => assert_eq!((code, s.status_code), (Some("42P01"), StatusCode::Error)),
            _ => assert_eq!((code, s.status_code), (None, StatusCode::Unset), "{s:#?}"),
        }
    }
    let texts: Vec<&str> = pg.iter().filter_map(|s| str_attr(s, "db.query.text")).collect();
    assert!(texts.contains(&"SELECT name FROM items WHERE name = ? AND n = ?"), "{texts:?}");
    assert!(pg.iter().any(|s| s.name == "UPDATE items" && str_attr(s, "db.collection.name") == Some("items")));

    // MySQL: the same statements as PostgreSQL (PyMySQL sends literals, go-sql-driver
    // prepared statements, the UPDATE prepared once and executed three times).
    let (server, my) = trace_of(&spans, "/mysql");
    children_of(server, &my);
    let mut want = vec![
        "INSERT items",
        "SELEC",
        "SELECT items",
        "SELECT items",
        "SELECT missing_table",
        "UPDATE items",
        "UPDATE items",
        "UPDATE items",
    ];
    want.sort_unstable();
    assert_eq!(sorted_names(&my), want, "{my:#?}");
    for s in &my {
        assert_eq!(str_attr(s, "db.system.name"), Some("mariadb"), "from the server's greeting: {s:#?}");
        assert_eq!(str_attr(s, "db.namespace"), Some(MYSQL_DB), "from the handshake: {s:#?}");
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(st.mysql.port)));
        let code = str_attr(s, "db.response.status_code");
        match s.name.as_str() {
            "SELEC" => assert_eq!((code, s.status_code), (Some("1064"), StatusCode::Error)),
            "SELECT missing_table" => assert_eq!((code, s.status_code), (Some("1146"), StatusCode::Error)),
            _ => assert_eq!((code, s.status_code), (None, StatusCode::Unset), "{s:#?}"),
        }
    }
    let texts: Vec<&str> = my.iter().filter_map(|s| str_attr(s, "db.query.text")).collect();
    assert!(texts.contains(&"SELECT name FROM items WHERE name = ? AND n = ?"), "{texts:?}");
    assert!(texts.contains(&"SELECT name FROM items WHERE n = ?"), "{texts:?}");

    // Memcached: pymemcache reads with `get`, gomemcache with `gets`.
    let (server, mc) = trace_of(&spans, "/memcached");
    children_of(server, &mc);
    let get = match lang {
        Lang::Python => "get",
        Lang::Go => "gets",
    };
    let mut want = vec!["delete", get, get, "incr", "incr", "set"];
    want.sort_unstable();
    assert_eq!(sorted_names(&mc), want, "{mc:#?}");
    let mut errors = 0;
    for s in &mc {
        assert_eq!(str_attr(s, "db.system.name"), Some("memcached"));
        assert_eq!(str_attr(s, "db.operation.name"), Some(s.name.as_str()));
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(st.memcached.port)));
        if s.status_code == StatusCode::Error {
            errors += 1;
            assert_eq!((s.name.as_str(), str_attr(s, "db.response.status_code")), ("incr", Some("CLIENT_ERROR")));
        }
    }
    assert_eq!(errors, 1, "incr of a string fails, incr of a missing key is a miss: {mc:#?}");
    let batches: Vec<i64> = mc.iter().filter_map(|s| int_attr(s, "db.operation.batch.size")).collect();
    assert_eq!(batches, [2], "one read of two keys: {mc:#?}");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn db_python_redis_py_psycopg_pymysql_pymemcache() {
    run(Lang::Python, "py-db");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn db_go_redis_pgx_mysql_gomemcache() {
    run(Lang::Go, "go-db");
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
    let mut cmd = match lang {
        Lang::Python => {
            let mut c = Command::new(python_bin());
            c.arg(fixtures_src().join("python/nats_service.py")).arg("--nats-port");
            c
        }
        Lang::Go => {
            let mut c = Command::new(fixtures_bin().join("natssvc"));
            c.arg("-nats-port");
            c
        }
    };
    cmd.arg(nats.port.to_string()).env("OTEL_SERVICE_NAME", service_name);
    let service = Service::start(service_name, cmd).expect("nats service");
    let pid = service.pid();
    let mut env = grpc_env(&rx);
    env.push(("OTEL_METRIC_EXPORT_INTERVAL", "500".into()));
    let agent = Agent::start(&args(&["--pid", &pid.to_string()]), &env).expect("agent");
    if let Lang::Go = lang {
        wait_until("Go probes attached", WAIT, || agent.log_text().contains(&format!("pid {pid}: Go ")))
            .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log_text()));
    }
    for path in ["/connect", "/publish"] {
        assert_eq!(curl(&[&service.url(path)]).expect(path), "ok", "{path}");
    }
    let nats_spans = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans.iter().filter(|s| str_attr(s, "messaging.system") == Some("nats")).cloned().collect()
    };
    let done = |spans: &[ReceivedSpan]| {
        nats_spans(spans).len() >= 8
            && spans.iter().any(|s| s.kind == SpanKind::Server && str_attr(s, "url.path") == Some("/publish"))
    };
    rt.block_on(rx.wait_for(|s| done(s), WAIT)).unwrap_or_else(|e| panic!("{e}: {:#?}", rx.spans()));
    // messaging.client.operation.duration: four publishes and four deliveries, by system and
    // operation, never by subject (cumulative: the latest point of each series).
    let latest = |points: &[tracer_tests::receiver::ReceivedPoint], op: &str| {
        points
            .iter()
            .filter(|p| {
                p.metric == "messaging.client.operation.duration"
                    && p.resource.get("service.name").map(String::as_str) == Some(service_name)
                    && p.attr_str("messaging.operation.name").as_deref() == Some(op)
            })
            .max_by_key(|p| p.time_unix_nano)
            .cloned()
    };
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
    let all = nats_spans(&spans);
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
fn db_nats_python_nats_py() {
    run_nats(Lang::Python, "py-nats");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn db_nats_go_nats_go() {
    run_nats(Lang::Go, "go-nats");
}
