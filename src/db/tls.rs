//! TLS for every session, on OpenSSL (the library libpq itself uses), with libpq's
//! semantics: a root certificate that exists is always checked against (so `require` with
//! `sslrootcert` behaves as `verify-ca`), `verify-ca`/`verify-full` refuse to run without
//! one, `verify-full` checks the host name as written in `host=` (also when `hostaddr=` is
//! what is connected to) by libpq's rules, client certificates and their key-file
//! permission check, SNI, protocol bounds, CRLs, and `tls-server-end-point` channel
//! binding for SCRAM-SHA-256-PLUS.
//!
//! The connector plugs into tokio-postgres as its `MakeTlsConnect`; tokio-postgres only
//! knows disable/prefer/require, so the sslmode fallbacks (`allow`, `prefer`) live in
//! `connect`, and the verification modes live here.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::{X509Lookup, X509StoreBuilderRef};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Ref, X509VerifyResult};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::db::libpq::params::{RootCert, SslMode, SslParams, TlsVersion};

/// Why TLS could not be set up or the handshake failed. Never carries a passphrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate, key or root files could not be used.
    #[error("{message}")]
    Setup {
        file: Option<PathBuf>,
        message: String,
    },
    #[error("{message}")]
    Handshake { message: String },
    /// `verify-full`: the certificate is valid but for another name.
    #[error("server certificate for \"{cert_name}\"{others} does not match host name \"{host}\"")]
    HostMismatch {
        host: String,
        cert_name: String,
        others: String,
    },
    #[error("{0}")]
    Verify(String),
}

impl TlsError {
    fn setup(file: Option<&Path>, message: impl Into<String>) -> TlsError {
        TlsError::Setup {
            file: file.map(Path::to_path_buf),
            message: message.into(),
        }
    }
}

/// What a session's TLS turned out to be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    pub cipher: String,
    /// The server's certificate chains to a trusted root (`verify-ca`, `verify-full`, or
    /// any mode with a root certificate present).
    pub certificate_verified: bool,
    /// The certificate was checked against the host name (`verify-full`).
    pub host_name_verified: bool,
}

struct Setup {
    context: Result<SslContext, TlsError>,
    /// A root certificate is configured, so the chain is verified.
    verify_chain: bool,
    verify_host: bool,
    sni: bool,
}

/// A node's TLS settings, ready to make connections: the `MakeTlsConnect` given to
/// tokio-postgres for sessions and cancel requests. Cheap to clone.
#[derive(Clone)]
pub struct TlsConnector {
    setup: Arc<Setup>,
    /// The name `verify-full` checks; `None`: the name tokio-postgres connects to.
    verify_name: Option<Option<String>>,
    /// What the last handshake of this connector found.
    outcome: Arc<Mutex<Option<TlsInfo>>>,
}

impl TlsConnector {
    /// Loads the node's certificates and keys now; a problem is kept and reported by
    /// every connection attempt that needs TLS (libpq reports it when connecting, too).
    pub fn new(params: &SslParams) -> TlsConnector {
        let (context, verify_chain) = match build_context(params) {
            Ok((c, v)) => (Ok(c), v),
            Err(e) => (Err(e), false),
        };
        TlsConnector {
            setup: Arc::new(Setup {
                context,
                verify_chain,
                verify_host: params.mode == SslMode::VerifyFull,
                sni: params.sni,
            }),
            verify_name: None,
            outcome: Arc::new(Mutex::new(None)),
        }
    }

    /// A connector for one connection attempt: its own handshake record, and the name
    /// `verify-full` checks (`None` when only `hostaddr=` was given: libpq then refuses).
    pub fn for_attempt(&self, verify_name: Option<String>) -> TlsConnector {
        TlsConnector {
            setup: Arc::clone(&self.setup),
            verify_name: Some(verify_name),
            outcome: Arc::new(Mutex::new(None)),
        }
    }

    /// The TLS the last handshake through this connector established.
    pub fn outcome(&self) -> Option<TlsInfo> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn proto(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::Tls1 => SslVersion::TLS1,
        TlsVersion::Tls1_1 => SslVersion::TLS1_1,
        TlsVersion::Tls1_2 => SslVersion::TLS1_2,
        TlsVersion::Tls1_3 => SslVersion::TLS1_3,
    }
}

fn openssl_message(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .iter()
        .map(|e| e.reason().unwrap_or("unknown error").to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// libpq's `initialize_SSL`: the context and whether the server's chain is verified.
fn build_context(p: &SslParams) -> Result<(SslContext, bool), TlsError> {
    let mut b = openssl::ssl::SslContextBuilder::new(SslMethod::tls_client())
        .map_err(|e| TlsError::setup(None, openssl_message(&e)))?;
    b.set_min_proto_version(p.min_version.map(proto))
        .and_then(|_| b.set_max_proto_version(p.max_version.map(proto)))
        .map_err(|e| TlsError::setup(None, openssl_message(&e)))?;

    let verifying = matches!(p.mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let root_file = match &p.root {
        RootCert::File(f) | RootCert::Default(f) => Some(f.as_path()),
        RootCert::System | RootCert::None => None,
    };
    let verify_chain = match &p.root {
        RootCert::System => {
            b.set_default_verify_paths().map_err(|e| {
                TlsError::setup(
                    None,
                    format!(
                        "cannot load the system's trusted root certificates: {}",
                        openssl_message(&e)
                    ),
                )
            })?;
            true
        }
        _ => match root_file.filter(|f| f.exists()) {
            Some(f) => {
                b.set_ca_file(f).map_err(|e| {
                    TlsError::setup(
                        Some(f),
                        format!(
                            "could not read root certificate file \"{}\": {}",
                            f.display(),
                            openssl_message(&e)
                        ),
                    )
                })?;
                load_crls(b.cert_store_mut(), p)?;
                true
            }
            None if verifying => {
                let message = match root_file {
                    Some(f) => format!(
                        "root certificate file \"{}\" does not exist; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification",
                        f.display()
                    ),
                    None => "could not get home directory to locate root certificate file; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification".to_string(),
                };
                return Err(TlsError::setup(root_file, message));
            }
            None => false,
        },
    };
    b.set_verify(if verify_chain {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });

    if let Some(cert) = &p.cert {
        match std::fs::metadata(cert) {
            Ok(_) => {
                b.set_certificate_chain_file(cert).map_err(|e| {
                    TlsError::setup(
                        Some(cert),
                        format!(
                            "could not read certificate file \"{}\": {}",
                            cert.display(),
                            openssl_message(&e)
                        ),
                    )
                })?;
                let key = p.key.as_deref().ok_or_else(|| {
                    TlsError::setup(None, "certificate present, but no private key file")
                })?;
                let pkey = load_key(key, p.key_password.as_ref().map(|s| s.expose()))?;
                b.set_private_key(&pkey)
                    .and_then(|_| b.check_private_key())
                    .map_err(|e| {
                        TlsError::setup(
                            Some(key),
                            format!(
                                "certificate does not match private key file \"{}\": {}",
                                key.display(),
                                openssl_message(&e)
                            ),
                        )
                    })?;
            }
            // No certificate file: go on without one; the server may not want it.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => {
                return Err(TlsError::setup(
                    Some(cert),
                    format!(
                        "could not open certificate file \"{}\": {e}",
                        cert.display()
                    ),
                ))
            }
        }
    }
    Ok((b.build(), verify_chain))
}

/// libpq loads CRLs only together with a root certificate file.
fn load_crls(store: &mut X509StoreBuilderRef, p: &SslParams) -> Result<(), TlsError> {
    let crl = p.crl.as_deref().filter(|f| f.exists());
    let dir = p.crl_dir.as_deref();
    if crl.is_none() && dir.is_none() {
        return Ok(());
    }
    if let Some(f) = crl {
        let lookup = store
            .add_lookup(X509Lookup::file())
            .map_err(|e| TlsError::setup(Some(f), openssl_message(&e)))?;
        lookup
            .load_crl_file(f, openssl::ssl::SslFiletype::PEM)
            .map_err(|e| {
                TlsError::setup(
                    Some(f),
                    format!(
                        "could not load SSL certificate revocation list \"{}\": {}",
                        f.display(),
                        openssl_message(&e)
                    ),
                )
            })?;
    }
    if let Some(d) = dir {
        let lookup = store
            .add_lookup(X509Lookup::hash_dir())
            .map_err(|e| TlsError::setup(Some(d), openssl_message(&e)))?;
        lookup
            .add_dir(&d.to_string_lossy(), openssl::ssl::SslFiletype::PEM)
            .map_err(|e| TlsError::setup(Some(d), openssl_message(&e)))?;
    }
    store
        .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
        .map_err(|e| TlsError::setup(None, openssl_message(&e)))
}

/// Loads a client key after libpq's permission check: a key others can read is refused
/// (0600 or less, or 0640 or less when owned by root, for system-wide keys).
fn load_key(
    path: &Path,
    passphrase: Option<&str>,
) -> Result<PKey<openssl::pkey::Private>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            TlsError::setup(
                Some(path),
                format!(
                    "certificate present, but not private key file \"{}\"",
                    path.display()
                ),
            )
        } else {
            TlsError::setup(
                Some(path),
                format!(
                    "could not stat private key file \"{}\": {e}",
                    path.display()
                ),
            )
        }
    })?;
    if !meta.is_file() {
        return Err(TlsError::setup(
            Some(path),
            format!(
                "private key file \"{}\" is not a regular file",
                path.display()
            ),
        ));
    }
    if key_mode_too_open(meta.uid(), meta.mode()) {
        return Err(TlsError::setup(
            Some(path),
            format!(
                "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
                path.display()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        TlsError::setup(
            Some(path),
            format!(
                "could not read private key file \"{}\": {e}",
                path.display()
            ),
        )
    })?;
    let key = match passphrase {
        Some(pass) => PKey::private_key_from_pem_passphrase(&bytes, pass.as_bytes()),
        None => PKey::private_key_from_pem(&bytes),
    }
    .or_else(|e| PKey::private_key_from_der(&bytes).map_err(|_| e));
    key.map_err(|e| {
        TlsError::setup(
            Some(path),
            format!(
                "could not load private key file \"{}\": {}{}",
                path.display(),
                openssl_message(&e),
                if passphrase.is_none() {
                    " (an encrypted key needs sslpassword)"
                } else {
                    ""
                }
            ),
        )
    })
}

/// libpq's rule, from `fe-secure-openssl.c`.
pub fn key_mode_too_open(uid: u32, mode: u32) -> bool {
    const S_IRWXG: u32 = 0o070;
    const S_IRWXO: u32 = 0o007;
    const S_IWGRP: u32 = 0o020;
    const S_IXGRP: u32 = 0o010;
    if uid == 0 {
        mode & (S_IWGRP | S_IXGRP | S_IRWXO) != 0
    } else {
        mode & (S_IRWXG | S_IRWXO) != 0
    }
}

/// A name in the server's certificate.
#[derive(Debug, Clone, Copy)]
pub enum CertName<'a> {
    Dns(&'a [u8]),
    Ip(&'a [u8]),
}

/// libpq's `verify-full` check (`pgtls_verify_peer_name_matches_certificate_guts`):
/// subject alternative names first; the common name only when there is no SAN of the
/// host's own kind (DNS name or IP address); `*.` wildcards match one label; case
/// does not matter.
pub fn check_host_name(
    host: &str,
    sans: &[CertName<'_>],
    common_name: Option<&[u8]>,
) -> Result<(), TlsError> {
    let host_ip: Option<IpAddr> = host.parse().ok();
    let mut check_cn = true;
    let mut names: Vec<String> = Vec::new();
    for san in sans {
        let (same_kind, matched, shown) = match san {
            CertName::Dns(raw) => {
                let name = name_text(raw)?;
                (host_ip.is_none(), name_matches(&name, host), name)
            }
            CertName::Ip(raw) => {
                let (matched, shown) = ip_matches(raw, host_ip)?;
                (host_ip.is_some(), matched, shown)
            }
        };
        if same_kind {
            check_cn = false;
        }
        names.push(shown);
        if matched {
            return Ok(());
        }
    }
    if check_cn {
        if let Some(raw) = common_name {
            let name = name_text(raw)?;
            let matched = name_matches(&name, host);
            names.push(name);
            if matched {
                return Ok(());
            }
        }
    }
    match names.first() {
        None => Err(TlsError::Verify(
            "could not get server's host name from server certificate".into(),
        )),
        Some(first) => Err(TlsError::HostMismatch {
            host: host.to_string(),
            cert_name: first.clone(),
            others: match names.len() {
                1 => String::new(),
                2 => " (and 1 other name)".into(),
                n => format!(" (and {} other names)", n - 1),
            },
        }),
    }
}

fn name_text(raw: &[u8]) -> Result<String, TlsError> {
    if raw.contains(&0) {
        return Err(TlsError::Verify(
            "SSL certificate's name contains embedded null".into(),
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

fn name_matches(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    // `*.example.com` matches exactly one label in front of `.example.com`.
    match name.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') && name.len() >= 3 => {
            host.len() > suffix.len()
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && !host[..host.len() - suffix.len()].contains('.')
        }
        _ => false,
    }
}

fn ip_matches(raw: &[u8], host: Option<IpAddr>) -> Result<(bool, String), TlsError> {
    let shown = match raw.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(raw).expect("length checked")),
        16 => IpAddr::from(<[u8; 16]>::try_from(raw).expect("length checked")),
        n => {
            return Err(TlsError::Verify(format!(
                "certificate contains IP address with invalid length {n}"
            )))
        }
    };
    Ok((host == Some(shown), shown.to_string()))
}

fn check_peer(cert: &X509Ref, host: &str) -> Result<(), TlsError> {
    let sans = cert.subject_alt_names();
    let names: Vec<CertName<'_>> = sans
        .iter()
        .flat_map(|s| s.iter())
        .filter_map(|n| {
            if let Some(ip) = n.ipaddress() {
                Some(CertName::Ip(ip))
            } else {
                n.dnsname().map(|d| CertName::Dns(d.as_bytes()))
            }
        })
        .collect();
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .map(|e| e.data().as_slice());
    check_host_name(host, &names, cn)
}

impl<S> MakeTlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Handshake;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Handshake, TlsError> {
        let context = self.setup.context.as_ref().map_err(Clone::clone)?;
        let mut ssl = Ssl::new(context).map_err(|e| TlsError::setup(None, openssl_message(&e)))?;
        let verify_name = match &self.verify_name {
            Some(name) => name.clone(),
            None => Some(domain.to_string()).filter(|d| !d.is_empty()),
        };
        // libpq sends SNI for host names, never for IP addresses.
        if self.setup.sni {
            if let Some(name) = verify_name
                .as_deref()
                .filter(|n| n.parse::<IpAddr>().is_err())
            {
                ssl.set_hostname(name)
                    .map_err(|e| TlsError::setup(None, openssl_message(&e)))?;
            }
        }
        Ok(Handshake {
            ssl,
            verify_name,
            verify_chain: self.setup.verify_chain,
            verify_host: self.setup.verify_host,
            outcome: Arc::clone(&self.outcome),
        })
    }
}

/// One TLS handshake, ready to run over a socket.
pub struct Handshake {
    ssl: Ssl,
    verify_name: Option<String>,
    verify_chain: bool,
    verify_host: bool,
    outcome: Arc<Mutex<Option<TlsInfo>>>,
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let mut stream =
                tokio_openssl::SslStream::new(self.ssl, BufReader::with_capacity(8192, stream))
                    .map_err(|e| TlsError::setup(None, openssl_message(&e)))?;
            if let Err(e) = Pin::new(&mut stream).connect().await {
                let verify = stream.ssl().verify_result();
                let mut message = match e.ssl_error() {
                    Some(stack) => openssl_message(stack),
                    None => e.to_string(),
                };
                if verify != X509VerifyResult::OK {
                    message = format!("certificate verify failed: {}", verify.error_string());
                }
                return Err(TlsError::Handshake { message });
            }
            if self.verify_host {
                let host = self.verify_name.as_deref().ok_or_else(|| {
                    TlsError::Verify(
                        "host name must be specified for a verified SSL connection".into(),
                    )
                })?;
                let cert = stream
                    .ssl()
                    .peer_certificate()
                    .ok_or_else(|| TlsError::Verify("server presented no certificate".into()))?;
                check_peer(&cert, host)?;
            }
            let ssl = stream.ssl();
            *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(TlsInfo {
                version: ssl.version_str().to_string(),
                cipher: ssl
                    .current_cipher()
                    .map(|c| c.name().to_string())
                    .unwrap_or_default(),
                certificate_verified: self.verify_chain,
                host_name_verified: self.verify_host,
            });
            Ok(TlsStream(stream))
        })
    }
}

/// An established TLS session carrying the PostgreSQL protocol.
pub struct TlsStream<S>(tokio_openssl::SslStream<BufReader<S>>);

impl<S> AsyncRead for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S> tokio_postgres::tls::TlsStream for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `tls-server-end-point` (RFC 5929): the hash of the server's certificate, with
    /// SHA-256 standing in for MD5 and SHA-1.
    fn channel_binding(&self) -> ChannelBinding {
        let hash = self.0.ssl().peer_certificate().and_then(|cert| {
            let algorithms = cert
                .signature_algorithm()
                .object()
                .nid()
                .signature_algorithms()?;
            let md = match algorithms.digest {
                Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
                nid => MessageDigest::from_nid(nid)?,
            };
            cert.digest(md).ok().map(|d| d.to_vec())
        });
        match hash {
            Some(h) => ChannelBinding::tls_server_end_point(h),
            None => ChannelBinding::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(s: &str) -> CertName<'_> {
        CertName::Dns(s.as_bytes())
    }

    #[test]
    fn host_names_by_libpqs_rules() {
        assert!(check_host_name("db1.example.com", &[dns("db1.example.com")], None).is_ok());
        assert!(check_host_name("DB1.Example.com", &[dns("db1.example.COM")], None).is_ok());
        assert!(check_host_name("db1.example.com", &[dns("*.example.com")], None).is_ok());
        // A wildcard covers one label only, and only as a whole first label.
        assert!(check_host_name("a.b.example.com", &[dns("*.example.com")], None).is_err());
        assert!(check_host_name("example.com", &[dns("*.example.com")], None).is_err());
        assert!(check_host_name("db1.example.com", &[dns("d*.example.com")], None).is_err());
        // A DNS SAN hides the CN for a DNS host.
        assert!(check_host_name("cn.example", &[dns("other")], Some(b"cn.example")).is_err());
        // No SAN: the CN counts.
        assert!(check_host_name("cn.example", &[], Some(b"cn.example")).is_ok());
        let e = check_host_name("db2", &[dns("db1"), dns("db3")], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server certificate for \"db1\" (and 1 other name) does not match host name \"db2\""
        );
        assert!(matches!(
            check_host_name("db", &[], None),
            Err(TlsError::Verify(_))
        ));
        assert!(matches!(
            check_host_name("db", &[CertName::Dns(b"d\0b")], None),
            Err(TlsError::Verify(_))
        ));
    }

    #[test]
    fn ip_hosts() {
        let v4 = [127, 0, 0, 1];
        assert!(check_host_name("127.0.0.1", &[CertName::Ip(&v4)], None).is_ok());
        assert!(check_host_name("127.0.0.2", &[CertName::Ip(&v4)], None).is_err());
        let v6: [u8; 16] = "::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        assert!(check_host_name("::1", &[CertName::Ip(&v6)], None).is_ok());
        // For an IP host, a DNS SAN does not hide the CN (libpq's deliberate leniency).
        assert!(check_host_name("10.0.0.1", &[dns("db")], Some(b"10.0.0.1")).is_ok());
        // An IP SAN does hide it.
        assert!(check_host_name("10.0.0.1", &[CertName::Ip(&v4)], Some(b"10.0.0.1")).is_err());
        // A DNS host never matches an IP SAN.
        assert!(check_host_name("localhost", &[CertName::Ip(&v4)], None).is_err());
        assert!(matches!(
            check_host_name("10.0.0.1", &[CertName::Ip(&[1, 2, 3])], None),
            Err(TlsError::Verify(_))
        ));
    }

    #[test]
    fn key_permissions() {
        assert!(!key_mode_too_open(1000, 0o100600));
        assert!(!key_mode_too_open(1000, 0o100400));
        assert!(key_mode_too_open(1000, 0o100640));
        assert!(key_mode_too_open(1000, 0o100604));
        assert!(!key_mode_too_open(0, 0o100640));
        assert!(key_mode_too_open(0, 0o100660));
        assert!(key_mode_too_open(0, 0o100644));
    }
}
