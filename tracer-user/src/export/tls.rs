//! Transport security of the OTLP exporters (traces and metrics, gRPC and HTTP).
//!
//! One TLS stack for everything: rustls with the ring crypto provider (the agent already links
//! both through the Kubernetes client; no C toolchain or cmake is needed, unlike aws-lc-rs).
//! gRPC goes through tonic's rustls connector, HTTP through reqwest with a rustls
//! `ClientConfig` built here; both trust the system's root certificates (`rustls-native-certs`)
//! unless a CA file is given, which is then the only trust anchor.
//!
//! The certificate, CA and key files are read once, when the exporter starts, with plain
//! `read` calls; a missing, unreadable or malformed file stops the agent with an error that
//! names the file (never its contents). A private key readable by group or others is reported
//! in a warning. Key bytes are never logged, formatted or kept beyond building the clients.
//!
//! [`failure`] turns a failed export's error chain into a sentence that says what went wrong
//! with the handshake (unknown CA, expired certificate, wrong host name, client certificate
//! required) and names the endpoint.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{OtlpConfig, TlsFiles};

/// A TLS setting that cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} file {} holds no PEM {kind}", path.display())]
    Empty { what: &'static str, path: PathBuf, kind: &'static str },
    #[error("the {what} file {} is not valid PEM: {reason}", path.display())]
    Pem { what: &'static str, path: PathBuf, reason: String },
    #[error("the CA certificate in {} is not usable: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("the client certificate {} and key {} do not make a usable identity: {reason}", cert.display(), key.display())]
    BadIdentity { cert: PathBuf, key: PathBuf, reason: String },
    #[error("no usable root certificate in the system store ({reason}); set OTEL_EXPORTER_OTLP_CERTIFICATE")]
    NoRoots { reason: String },
    #[error("cannot set up TLS: {reason}")]
    Setup { reason: String },
}

/// The PEM contents of the configured files, checked. Holds the private key: no `Debug`.
pub(crate) struct TlsMaterial {
    ca: Option<(PathBuf, Vec<u8>)>,
    identity: Option<Identity>,
}

struct Identity {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

fn certs(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_owned(), kind: "certificate" });
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The parser's error names the PEM problem, never the key bytes.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { what: "client key", path: path.to_owned(), kind: "private key" }
        }
        e => TlsError::Pem { what: "client key", path: path.to_owned(), reason: e.to_string() },
    })
}

/// Warns when a private key file can be read by group or others.
fn check_key_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "the OTLP client key {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

impl TlsMaterial {
    /// Reads and checks the files of `files`.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca = match &files.ca {
            Some(path) => {
                let pem = read("CA certificate", path)?;
                certs("CA certificate", path, &pem)?;
                Some((path.clone(), pem))
            }
            None => None,
        };
        let identity = match (&files.client_certificate, &files.client_key) {
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read("client certificate", cert_path)?;
                certs("client certificate", cert_path, &cert_pem)?;
                check_key_permissions(key_path);
                let key_pem = read("client key", key_path)?;
                key(key_path, &key_pem)?;
                Some(Identity { cert_path: cert_path.clone(), key_path: key_path.clone(), cert_pem, key_pem })
            }
            // The configuration requires both or neither.
            _ => None,
        };
        Ok(Self { ca, identity })
    }

    fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup { reason: e.to_string() })
    }

    /// A configuration that trusts no server, for clients that only speak plain HTTP.
    fn untrusting_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        Ok(Self::builder()?.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
    }

    /// A rustls client configuration (ring provider): the CA file or the system roots, and the
    /// client identity when configured.
    pub(crate) fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let builder = Self::builder()?;
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some((path, pem)) => {
                for cert in certs("CA certificate", path, pem)? {
                    roots.add(cert).map_err(|e| TlsError::BadCa { path: path.clone(), reason: e.to_string() })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let reason = found.errors.first().map_or("the store is empty".to_string(), |e| e.to_string());
                    return Err(TlsError::NoRoots { reason });
                }
            }
        }
        let builder = builder.with_root_certificates(roots);
        match &self.identity {
            Some(id) => {
                let chain = certs("client certificate", &id.cert_path, &id.cert_pem)?;
                builder.with_client_auth_cert(chain, key(&id.key_path, &id.key_pem)?).map_err(|e| {
                    TlsError::BadIdentity {
                        cert: id.cert_path.clone(),
                        key: id.key_path.clone(),
                        reason: e.to_string(),
                    }
                })
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }

    /// tonic's TLS settings: the same trust anchors and identity.
    pub(crate) fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &self.ca {
            Some((_, pem)) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        if let Some(id) = &self.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        tls
    }
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("OTLP endpoint {endpoint}: {source}")]
    Tls {
        endpoint: String,
        #[source]
        source: TlsError,
    },
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot build the HTTP client for {endpoint}: {reason}")]
    HttpClient { endpoint: String, reason: String },
}

/// The TLS material of `cfg`: read for `https://`, none for `http://`.
pub(crate) fn material(cfg: &OtlpConfig) -> Result<Option<TlsMaterial>, TransportError> {
    if !cfg.is_tls() {
        if cfg.tls != TlsFiles::default() {
            log::warn!("OTLP endpoint {} is plain http://: the certificate settings are not used", cfg.endpoint);
        }
        return Ok(None);
    }
    TlsMaterial::load(&cfg.tls)
        .map(Some)
        .map_err(|source| TransportError::Tls { endpoint: cfg.endpoint.clone(), source })
}

/// A lazily connecting gRPC channel to `cfg.endpoint`, with TLS for `https://`.
/// Must run inside a Tokio runtime.
pub(crate) fn grpc_channel(cfg: &OtlpConfig) -> Result<tonic::transport::Channel, TransportError> {
    grpc_channel_with(cfg, material(cfg)?.as_ref())
}

/// [`grpc_channel`] with material already read.
pub(crate) fn grpc_channel_with(
    cfg: &OtlpConfig,
    material: Option<&TlsMaterial>,
) -> Result<tonic::transport::Channel, TransportError> {
    let invalid = |reason: String| TransportError::Endpoint { endpoint: cfg.endpoint.clone(), reason };
    let mut endpoint = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(|e| invalid(e.to_string()))?
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(5)));
    if let Some(m) = material {
        endpoint = endpoint.tls_config(m.tonic_config()).map_err(|e| invalid(chain(&e)))?;
    }
    Ok(endpoint.connect_lazy())
}

/// An HTTP client for `cfg.endpoint`, with TLS for `https://`.
pub(crate) fn http_client(cfg: &OtlpConfig) -> Result<reqwest::Client, TransportError> {
    http_client_with(cfg, material(cfg)?.as_ref())
}

/// [`http_client`] with material already read.
pub(crate) fn http_client_with(
    cfg: &OtlpConfig,
    material: Option<&TlsMaterial>,
) -> Result<reqwest::Client, TransportError> {
    let _: http::Uri = cfg.endpoint.parse().map_err(|e: http::uri::InvalidUri| TransportError::Endpoint {
        endpoint: cfg.endpoint.clone(),
        reason: e.to_string(),
    })?;
    let tls_error = |source| TransportError::Tls { endpoint: cfg.endpoint.clone(), source };
    // reqwest is built without a default crypto provider, so it always gets a configuration:
    // for plain http:// one that trusts nothing (it is never used).
    let config = match material {
        Some(m) => m.rustls_config().map_err(tls_error)?,
        None => TlsMaterial { ca: None, identity: None }.untrusting_config().map_err(tls_error)?,
    };
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|e| TransportError::HttpClient { endpoint: cfg.endpoint.clone(), reason: chain(&e) })
}

/// The messages of an error and its sources, joined with `: ` (repeats skipped).
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let msg = e.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
        next = e.source();
    }
    out
}

/// The rustls error somewhere in `err`'s chain (also inside an `io::Error`, whose `source`
/// skips the error it wraps).
fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(r) = find_rustls(inner)
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

/// Records whether the server asked for a client certificate.
#[derive(Debug)]
struct Asked {
    inner: Arc<dyn rustls::client::ResolvesClientCert>,
    asked: std::sync::atomic::AtomicBool,
}

impl rustls::client::ResolvesClientCert for Asked {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// A fresh TLS handshake with `endpoint` (offering `alpn`), then a short read: the way to learn
/// why a server closed a connection the client thought was set up. With TLS 1.3 a server
/// checks the client certificate after the client's handshake is done, so its refusal reaches
/// the connection's reader (an alert, or only a reset), never the failed request. `None`: no
/// TLS problem seen.
pub(crate) async fn probe(endpoint: &str, config: &rustls::ClientConfig, alpn: &[u8]) -> Option<String> {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncReadExt as _;
    let uri: http::Uri = endpoint.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name = rustls::pki_types::ServerName::try_from(host.clone()).ok()?;
    let mut config = config.clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let asked = Arc::new(Asked { inner: config.client_auth_cert_resolver.clone(), asked: false.into() });
    config.client_auth_cert_resolver = asked.clone();
    let limit = std::time::Duration::from_secs(2);
    let tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect((host.as_str(), port))).await.ok()?.ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut stream = match tokio::time::timeout(limit, connector.connect(name, tcp)).await.ok()? {
        Ok(stream) => stream,
        Err(e) => return failure(endpoint, &e),
    };
    let mut byte = [0u8; 1];
    let closed = match tokio::time::timeout(limit, stream.read(&mut byte)).await {
        Ok(Err(e)) => match failure(endpoint, &e) {
            Some(message) => return Some(message),
            None => true,
        },
        Ok(Ok(0)) => true,
        _ => false,
    };
    // Closed (often with a reset that discards the alert) right after a handshake in which the
    // server asked for a client certificate: the certificate is what it refused.
    if closed && asked.asked.load(Ordering::Relaxed) {
        let why = if asked.has_certs_configured() {
            "it closed the connection after the handshake: it does not accept the client certificate"
        } else {
            "it requires a client certificate (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY) \
             and none is configured"
        };
        return Some(format!("TLS with {endpoint} failed: {why}"));
    }
    None
}

impl Asked {
    fn has_certs_configured(&self) -> bool {
        rustls::client::ResolvesClientCert::has_certs(self)
    }
}

/// When `err` is a failed TLS handshake: what went wrong, in words, naming `endpoint`.
pub(crate) fn failure(endpoint: &str, err: &(dyn StdError + 'static)) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let r = find_rustls(err)?;
    let what = match r {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "its certificate is not signed by a trusted CA (OTEL_EXPORTER_OTLP_CERTIFICATE names the CA to trust)"
                .to_string()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "its certificate has expired".to_string(),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "its certificate is not valid yet".to_string()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "its certificate is not valid for this host name".to_string()
        }
        E::InvalidCertificate(other) => format!("its certificate is not valid: {other:?}"),
        E::AlertReceived(alert @ (A::CertificateRequired | A::BadCertificate | A::HandshakeFailure)) => format!(
            "it refused the handshake ({alert:?}): it requires a client certificate \
             (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY) or does not accept the one given"
        ),
        E::AlertReceived(alert @ (A::UnknownCA | A::DecryptError)) => {
            format!("it does not accept the client certificate ({alert:?})")
        }
        other => other.to_string(),
    };
    Some(format!("TLS with {endpoint} failed: {what}"))
}
