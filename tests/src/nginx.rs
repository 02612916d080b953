//! nginx from Debian's package, serving static files (plain HTTP/1.1, or HTTPS with HTTP/2) from
//! a directory of its own.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::certs::CertFiles;
use crate::harness::{TempDir, wait_until};

/// The bytes of `/bytes/<n>`: the alphabet over and over.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// nginx on 127.0.0.1:`port`, serving `/hello`, `/bytes/100000` and `/bytes/1048576`. Stopped
/// on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Nginx {
    /// Plain HTTP/1.1, or with `tls` HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with that certificate.
    pub fn start(tls: Option<&CertFiles>) -> Self {
        let dir = TempDir::new("nginx");
        let d = dir.0.display();
        let www = dir.0.join("www");
        std::fs::create_dir_all(www.join("bytes")).unwrap();
        std::fs::write(www.join("hello"), "hello").unwrap();
        std::fs::write(www.join("bytes/1048576"), pattern(1 << 20)).unwrap();
        std::fs::write(www.join("bytes/100000"), pattern(100_000)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = match tls {
            None => format!("listen 127.0.0.1:{port};"),
            Some(c) => format!(
                "listen 127.0.0.1:{port} ssl http2; ssl_certificate {}; ssl_certificate_key {};",
                c.cert.display(),
                c.key.display()
            ),
        };
        let conf = dir.0.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{}}\n\
                 http {{ access_log off; default_type application/octet-stream;\n\
                   client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
                   uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                   server {{ {listen} root {d}/www; }} }}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .args(["-c"])
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx (installed by scripts/setup.sh)");
        wait_until("nginx to listen", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok())
            .unwrap();
        Nginx { child, port, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too (SIGKILL would leave the worker running).
        // SAFETY: a signal to our own child, which has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
