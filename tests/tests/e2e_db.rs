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
use std::process::{Command, Stdio};
use std::time::Duration;

use tracer_tests::backends::{Lang, Server, TempDir, fixture, sorted_names, trace_of};
use tracer_tests::harness::{Agent, Service, args, curl, free_port, grpc_env, require_root, rt, run_ok, wait_until};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};
use tracer_tests::scenarios::{int_attr, str_attr};

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
    let server = Server::new(child, port, libc::SIGKILL, dir);
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
    let server = Server::new(child, port, libc::SIGQUIT, dir);
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
    let server = Server::new(child, port, libc::SIGKILL, dir);
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
    let server = Server::new(child, port, libc::SIGKILL, dir);
    wait_until("memcached answers version", WAIT, || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let mut buf = [0u8; 8];
        s.write_all(b"version\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"VERSION "
    })
    .expect("memcached ready");
    server
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
    let ports = [redis.port, pg.port, mysql.port, memcached.port].map(|p| p.to_string());
    let flags = [
        ("redis-port", ports[0].as_str()),
        ("pg-port", &ports[1]),
        ("pg-db", PG_DB),
        ("pg-user", PG_USER),
        ("mysql-port", &ports[2]),
        ("mysql-db", MYSQL_DB),
        ("mysql-user", MYSQL_USER),
        ("memcached-port", &ports[3]),
    ];
    let cmd = fixture(*lang, "db_server.py", "dbsvc", service_name, &flags);
    let service = Service::start(service_name, cmd).expect("db service");
    Setup { redis, pg, mysql, memcached, service }
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
