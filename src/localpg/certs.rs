//! A throwaway certificate authority for TLS tests: a CA, server certificates for the
//! names a test connects to, and client certificates for `cert` authentication. Made
//! with the OpenSSL library pgconvoy already links, so no `openssl` command is needed.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

use crate::localpg::LocalPgError;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that signs certificates into its directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    cert: X509,
    key: PKey<Private>,
    serial: u32,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LocalPgError + 'a {
    move |source| LocalPgError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn ssl_err(e: openssl::error::ErrorStack) -> LocalPgError {
    LocalPgError::Command {
        command: "openssl (certificate generation)".into(),
        status: "failed".into(),
        stderr: e.to_string(),
    }
}

fn new_key() -> Result<PKey<Private>, LocalPgError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(ssl_err)?;
    let ec = EcKey::generate(&group).map_err(ssl_err)?;
    PKey::from_ec_key(ec).map_err(ssl_err)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LocalPgError> {
    std::fs::write(path, bytes).map_err(err("write", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(err("chmod", path))
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/NAME.crt`.
    pub fn new(dir: &Path, name: &str) -> Result<TestCa, LocalPgError> {
        std::fs::create_dir_all(dir).map_err(err("create", dir))?;
        let key = new_key()?;
        let mut ca = TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert: X509Builder::new().map_err(ssl_err)?.build(),
            key,
            serial: 1,
        };
        let cert = ca.build(name, &[], Role::Ca, &ca.key.clone(), true)?;
        let path = ca.ca_file_for(name);
        std::fs::write(&path, cert.to_pem().map_err(ssl_err)?).map_err(err("write", &path))?;
        ca.cert = cert;
        Ok(ca)
    }

    fn ca_file_for(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    /// The CA's certificate file (for `sslrootcert` or the server's `ssl_ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file_for(&self.name)
    }

    /// A server certificate for `names` (DNS names or IP addresses), CN the first name.
    pub fn server_cert(&mut self, file: &str, names: &[&str]) -> Result<CertFiles, LocalPgError> {
        let cn = names.first().copied().unwrap_or("localhost");
        self.issue(file, cn, names, Role::Server)
    }

    /// A client certificate whose CN is the database user `user` (for `cert` authentication).
    pub fn client_cert(&mut self, file: &str, user: &str) -> Result<CertFiles, LocalPgError> {
        self.issue(file, user, &[], Role::Client)
    }

    fn issue(
        &mut self,
        file: &str,
        cn: &str,
        names: &[&str],
        role: Role,
    ) -> Result<CertFiles, LocalPgError> {
        let key = new_key()?;
        let cert = self.build(cn, names, role, &key, false)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.to_pem().map_err(ssl_err)?)
            .map_err(err("write", &files.cert))?;
        write_private(
            &files.key,
            &key.private_key_to_pem_pkcs8().map_err(ssl_err)?,
        )?;
        Ok(files)
    }

    fn build(
        &mut self,
        cn: &str,
        names: &[&str],
        role: Role,
        key: &PKey<Private>,
        self_signed: bool,
    ) -> Result<X509, LocalPgError> {
        let mut name = X509NameBuilder::new().map_err(ssl_err)?;
        name.append_entry_by_nid(Nid::COMMONNAME, cn)
            .map_err(ssl_err)?;
        let name = name.build();
        let mut b = X509Builder::new().map_err(ssl_err)?;
        b.set_version(2).map_err(ssl_err)?;
        let mut serial = BigNum::new().map_err(ssl_err)?;
        serial
            .rand(64, MsbOption::MAYBE_ZERO, false)
            .map_err(ssl_err)?;
        serial.add_word(self.serial).map_err(ssl_err)?;
        self.serial += 1;
        let serial = serial.to_asn1_integer().map_err(ssl_err)?;
        b.set_serial_number(&serial).map_err(ssl_err)?;
        b.set_subject_name(&name).map_err(ssl_err)?;
        if self_signed {
            b.set_issuer_name(&name).map_err(ssl_err)?;
        } else {
            b.set_issuer_name(self.cert.subject_name())
                .map_err(ssl_err)?;
        }
        b.set_pubkey(key).map_err(ssl_err)?;
        let not_before = Asn1Time::days_from_now(0).map_err(ssl_err)?;
        let not_after = Asn1Time::days_from_now(30).map_err(ssl_err)?;
        b.set_not_before(&not_before).map_err(ssl_err)?;
        b.set_not_after(&not_after).map_err(ssl_err)?;
        match role {
            Role::Ca => {
                b.append_extension(
                    BasicConstraints::new()
                        .critical()
                        .ca()
                        .build()
                        .map_err(ssl_err)?,
                )
                .map_err(ssl_err)?;
                b.append_extension(
                    KeyUsage::new()
                        .critical()
                        .key_cert_sign()
                        .crl_sign()
                        .build()
                        .map_err(ssl_err)?,
                )
                .map_err(ssl_err)?;
            }
            Role::Server | Role::Client => {
                b.append_extension(BasicConstraints::new().build().map_err(ssl_err)?)
                    .map_err(ssl_err)?;
                b.append_extension(
                    KeyUsage::new()
                        .critical()
                        .digital_signature()
                        .key_agreement()
                        .build()
                        .map_err(ssl_err)?,
                )
                .map_err(ssl_err)?;
                let mut eku = ExtendedKeyUsage::new();
                if role == Role::Server {
                    eku.server_auth();
                } else {
                    eku.client_auth();
                }
                b.append_extension(eku.build().map_err(ssl_err)?)
                    .map_err(ssl_err)?;
            }
        }
        if !names.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for n in names {
                if n.parse::<IpAddr>().is_ok() {
                    san.ip(n);
                } else {
                    san.dns(n);
                }
            }
            let ext = san
                .build(&b.x509v3_context(Some(&self.cert), None))
                .map_err(ssl_err)?;
            b.append_extension(ext).map_err(ssl_err)?;
        }
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .map_err(ssl_err)?;
        b.append_extension(ski).map_err(ssl_err)?;
        let signer = if self_signed { key } else { &self.key };
        b.sign(signer, MessageDigest::sha256()).map_err(ssl_err)?;
        Ok(b.build())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ca,
    Server,
    Client,
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509StoreContext;

    #[test]
    fn issued_certificates_chain_to_the_ca() {
        let d = tempfile::tempdir().unwrap();
        let mut ca = TestCa::new(d.path(), "test-ca").unwrap();
        let server = ca
            .server_cert("server", &["localhost", "127.0.0.1"])
            .unwrap();
        let client = ca.client_cert("client", "alice").unwrap();
        let ca_cert = X509::from_pem(&std::fs::read(ca.ca_file()).unwrap()).unwrap();
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(ca_cert).unwrap();
        let store = store.build();
        for files in [&server, &client] {
            let cert = X509::from_pem(&std::fs::read(&files.cert).unwrap()).unwrap();
            let mut ctx = X509StoreContext::new().unwrap();
            let chain = Stack::new().unwrap();
            assert!(ctx
                .init(&store, &cert, &chain, |c| c.verify_cert())
                .unwrap());
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = TestCa::new(&d.path().join("other"), "other-ca").unwrap();
        let cert = X509::from_pem(&std::fs::read(&server.cert).unwrap()).unwrap();
        let mut store = X509StoreBuilder::new().unwrap();
        store
            .add_cert(X509::from_pem(&std::fs::read(other.ca_file()).unwrap()).unwrap())
            .unwrap();
        let store = store.build();
        let mut ctx = X509StoreContext::new().unwrap();
        let chain = Stack::new().unwrap();
        assert!(!ctx
            .init(&store, &cert, &chain, |c| c.verify_cert())
            .unwrap());
    }
}
