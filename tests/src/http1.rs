//! A minimal HTTP/1.1 client for tests that drive a fixture request by request over keep-alive
//! connections (the fixtures answer with a Content-Length).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;

/// A keep-alive connection.
pub type Conn = BufReader<TcpStream>;

/// Connects to `127.0.0.1:port`, without Nagle's delay.
pub fn connect(port: u16) -> std::io::Result<Conn> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

/// Sends `GET path` on `conn` and returns the response's status and body (Content-Length
/// framing).
pub fn get(conn: &mut Conn, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    // One write: a request split over segments would wait on delayed ACKs (Nagle).
    conn.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
    response(conn)
}

/// Sends `POST path` with `body` (Content-Length framing) on `conn`, as [`get`] does.
pub fn post(conn: &mut Conn, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    conn.get_mut().write_all(&req)?;
    response(conn)
}

/// Reads one response: its status and body.
fn response(conn: &mut Conn) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Ok((status, body))
}
