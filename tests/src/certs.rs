//! Test certificates made with rcgen: a CA, server certificates for 127.0.0.1 / localhost
//! (valid or expired) and client certificates, written as PEM files (keys mode 0600) into a
//! directory that is removed when the [`Pki`] drops.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::harness::TempDir;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA and the files it issued.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca_file: PathBuf,
}

fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

impl Pki {
    /// A new CA named `name`, its files in a fresh temporary directory.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new(&format!("pki-{name}"));
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("tracer test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = dir.0.join("ca.pem");
        write(&ca_file, &ca.pem(), 0o644)?;
        Ok(Self { dir, ca, ca_file })
    }

    fn issue(&self, file: &str, mut params: CertificateParams, expired: bool) -> anyhow::Result<CertFiles> {
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let files =
            CertFiles { cert: self.dir.0.join(format!("{file}.pem")), key: self.dir.0.join(format!("{file}.key")) };
        write(&files.cert, &cert.pem(), 0o644)?;
        write(&files.key, &key.serialize_pem(), 0o600)?;
        Ok(files)
    }

    /// A server certificate for 127.0.0.1 and localhost; `expired`: valid only in 2020.
    pub fn server(&self, file: &str, expired: bool) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params, expired)
    }

    /// A client certificate.
    pub fn client(&self, file: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "tracer agent");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params, false)
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}
