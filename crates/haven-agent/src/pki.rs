//! The cluster's public key infrastructure and mutual TLS (DESIGN §3a).
//!
//! - Bootstrap makes the cluster CA (`new_ca`): an ECDSA P-256 key and a
//!   self-signed CA certificate. Managers hold the CA key in the replicated
//!   state, so whichever leads can sign.
//! - Every host makes its own key and sends only a certificate signing
//!   request (`new_host_key`, `csr`); the leader answers with a certificate
//!   (`sign_host`) that names the host and its role in a URI subject
//!   alternative name, `urn:haven:<cluster>:<role>:<host>`. The key never
//!   leaves the host.
//! - `Tls` is a host's live material (the CA bundle it trusts, its
//!   certificate and key), shared by the server and every client, and
//!   replaced in place when the certificate is renewed: connections opened
//!   afterwards use the new one.
//! - A server accepts connections with or without a client certificate (an
//!   operator's CLI sends a bearer token instead; a joining host has none
//!   yet); a certificate that is sent must chain to the cluster CA, and the
//!   identity it names travels with each request (`peer::PeerCert`) for the
//!   authorization layer. Clients verify that the server's certificate
//!   chains to the cluster CA; host names are not checked (hosts are reached
//!   by address, and the identity in the certificate is what counts).

use crate::peer::{CertIdentity, PeerCert, UserCert};
use anyhow::{anyhow, bail, Context, Result};
use haven_core::model::Role;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// A CA certificate is valid this long.
pub const CA_VALID_DAYS: i64 = 3_650;
/// A host certificate is valid this long unless the cluster's
/// `host_cert_validity_s` says otherwise; the agent renews it once a third
/// of its lifetime is left (`Tls::renew_due`).
pub const HOST_CERT_VALID_DAYS: i64 = 90;
pub const HOST_CERT_VALID_S: u64 = haven_core::model::DEFAULT_HOST_CERT_VALIDITY_S;
/// A certificate is valid from this long before it is signed: clocks of
/// hosts differ.
const BACKDATE_S: i64 = 3_600;
const URI_PREFIX: &str = "urn:haven:";

/// The file names in `DATA/tls/` (directory mode 0700, key 0600).
pub const TLS_DIR: &str = "tls";
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "host.pem";
pub const KEY_FILE: &str = "host-key.pem";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster CA: its certificate and key (PEM).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new CA for `cluster_id`.
pub fn new_ca(cluster_id: &str) -> Result<CaMaterial> {
    let key = rcgen::KeyPair::generate().context("generating the CA key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!(
            "haven cluster {cluster_id} CA {}",
            time::OffsetDateTime::now_utc().unix_timestamp()
        ),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(BACKDATE_S);
    params.not_after = now + time::Duration::days(CA_VALID_DAYS);
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as DER integers for serials must be.
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// Every certificate in a PEM bundle, in order.
pub fn certs_of(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let mut out = vec![];
    for item in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let item = item.map_err(|e| anyhow!("not a PEM certificate bundle: {e}"))?;
        if item.label == "CERTIFICATE" {
            out.push(CertificateDer::from(item.contents));
        }
    }
    if out.is_empty() {
        bail!("no certificate in the PEM text");
    }
    Ok(out)
}

/// SHA-256 of a certificate's DER, lowercase hex: what a join token pins.
pub fn sha256_hex(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash of the first (current) certificate of a CA bundle.
pub fn ca_sha256_hex(bundle_pem: &str) -> Result<String> {
    Ok(sha256_hex(&certs_of(bundle_pem)?[0]))
}

/// The certificate of `bundle_pem` whose hash is `sha256`, as PEM, if any:
/// a joiner trusts only the CA its token names, whatever else it is sent.
pub fn pinned_ca(bundle_pem: &str, sha256: &str) -> Option<String> {
    certs_of(bundle_pem)
        .ok()?
        .into_iter()
        .find(|c| sha256_hex(c).eq_ignore_ascii_case(sha256))
        .map(|c| pem_of(&c))
}

pub fn pem_of(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// A new host key (PEM).
pub fn new_host_key() -> Result<String> {
    Ok(rcgen::KeyPair::generate()
        .context("generating the host key")?
        .serialize_pem())
}

/// A certificate signing request for `key_pem`. What it asks for is
/// ignored: the signer decides the name and role; only the public key (and
/// the proof that the sender holds its private key) counts.
pub fn csr(key_pem: &str, host: &str) -> Result<String> {
    let key = rcgen::KeyPair::from_pem(key_pem).context("reading the host key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let csr = params
        .serialize_request(&key)
        .context("making the certificate signing request")?;
    csr.pem()
        .context("encoding the certificate signing request")
}

/// Sign a host certificate for `host` with `role` in `cluster_id`, for the
/// public key of `csr_pem` (its signature is checked), valid for `valid_s`
/// (the cluster's `host_cert_validity_s`).
pub fn sign_host(
    ca: &CaMaterial,
    csr_pem: &str,
    cluster_id: &str,
    host: &str,
    role: Role,
    ips: &[IpAddr],
    valid_s: u64,
) -> Result<String> {
    let uri = uri_of(cluster_id, role, host);
    let sans = ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip));
    let eku = [
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let valid = time::Duration::seconds(i64::try_from(valid_s).unwrap_or(i64::MAX / 2));
    sign(ca, csr_pem, host, &uri, sans, &eku, valid)
        .with_context(|| format!("signing the certificate of host {host:?}"))
}

/// Shortest and longest lifetime of an operator's client certificate.
pub const USER_CERT_VALID_MS_MIN: u64 = 60_000;
pub const USER_CERT_VALID_MS_MAX: u64 = 3_650 * 86_400_000;
/// An operator's client certificate is valid this long unless asked.
pub const USER_CERT_VALID_MS_DEFAULT: u64 = 90 * 86_400_000;

/// Sign an operator's client certificate, for the public key of `csr_pem`:
/// it names the credential record `id` (and `name` as its common name), is
/// for client authentication only, and is valid for `valid_ms`.
pub fn sign_user(
    ca: &CaMaterial,
    csr_pem: &str,
    cluster_id: &str,
    id: &str,
    name: &str,
    valid_ms: u64,
) -> Result<String> {
    let uri = format!("{URI_PREFIX}{cluster_id}:{USER_WORD}:{id}");
    let eku = [rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let valid = time::Duration::milliseconds(valid_ms.min(USER_CERT_VALID_MS_MAX) as i64);
    sign(ca, csr_pem, name, &uri, std::iter::empty(), &eku, valid)
        .with_context(|| format!("signing the client certificate {name:?}"))
}

/// `sign_user` with any validity, a negative one (already expired)
/// included.
#[cfg(test)]
pub(crate) fn sign_user_for(
    ca: &CaMaterial,
    csr_pem: &str,
    cluster_id: &str,
    id: &str,
    valid: time::Duration,
) -> String {
    let uri = format!("{URI_PREFIX}{cluster_id}:{USER_WORD}:{id}");
    let eku = [rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    sign(ca, csr_pem, "test", &uri, std::iter::empty(), &eku, valid).unwrap()
}

fn sign(
    ca: &CaMaterial,
    csr_pem: &str,
    common_name: &str,
    uri: &str,
    sans: impl Iterator<Item = rcgen::SanType>,
    eku: &[rcgen::ExtendedKeyUsagePurpose],
    valid: time::Duration,
) -> Result<String> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| anyhow!("the certificate signing request is not valid: {e}"))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).context("reading the CA key")?;
    let ca_cert = rcgen::CertificateParams::from_ca_cert_pem(&ca.cert_pem)
        .context("reading the CA certificate")?
        .self_signed(&ca_key)
        .context("loading the CA")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::Ia5String::try_from(uri.to_owned())
            .map_err(|e| anyhow!("{uri:?} cannot go in a certificate: {e}"))?,
    )];
    params.subject_alt_names.extend(sans);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = eku.to_vec();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(BACKDATE_S);
    params.not_after = now + valid;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&csr.public_key, &ca_cert, &ca_key)?;
    Ok(cert.pem())
}

/// The role word of operators' certificates in the URI.
const USER_WORD: &str = "user";

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Manager => "manager",
        Role::Worker => "worker",
    }
}

fn uri_of(cluster_id: &str, role: Role, host: &str) -> String {
    format!("{URI_PREFIX}{cluster_id}:{}:{host}", role_word(role))
}

/// The identity a (chain-verified) certificate names, if it is a host
/// certificate of this cluster.
pub fn identity_of(der: &[u8], cluster_id: &str) -> Option<CertIdentity> {
    match peer_of(der, cluster_id) {
        PeerCert::Host(id) => Some(id),
        _ => None,
    }
}

/// What a (chain-verified) certificate names in this cluster: a host, an
/// operator's credential record, or nothing.
pub fn peer_of(der: &[u8], cluster_id: &str) -> PeerCert {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return PeerCert::None;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return PeerCert::None;
    };
    let named = san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => {
            let rest = uri.strip_prefix(URI_PREFIX)?;
            let (cluster, rest) = rest.split_once(':')?;
            let (role, name) = rest.split_once(':')?;
            if cluster != cluster_id || name.is_empty() {
                return None;
            }
            let host = |role| {
                PeerCert::Host(CertIdentity {
                    cluster_id: cluster.to_owned(),
                    host: name.to_owned(),
                    role,
                })
            };
            match role {
                "manager" => Some(host(Role::Manager)),
                "worker" => Some(host(Role::Worker)),
                USER_WORD => Some(PeerCert::User(UserCert {
                    cluster_id: cluster.to_owned(),
                    id: name.to_owned(),
                    cert_sha256: sha256_hex(der),
                })),
                _ => None,
            }
        }
        _ => None,
    });
    named.unwrap_or_default()
}

/// `bundle_sha256`, remembered for the last bundle asked about: the
/// coordinator compares every heartbeat's report with the cluster's bundle,
/// which changes only with a CA rotation.
pub fn bundle_sha256_cached(bundle_pem: &str) -> String {
    static LAST: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match &*last {
        Some((b, h)) if b == bundle_pem => h.clone(),
        _ => {
            let h = bundle_sha256(bundle_pem);
            *last = Some((bundle_pem.to_owned(), h.clone()));
            h
        }
    }
}

/// SHA-256 over every certificate of a bundle, in order: a bundle's
/// identity (what hosts report, and compare to the cluster's).
pub fn bundle_sha256(bundle_pem: &str) -> String {
    let mut h = Sha256::new();
    for c in certs_of(bundle_pem).unwrap_or_default() {
        h.update(sha256_hex(&c));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the certificate in `bundle_pem` that issued the first
/// certificate of `cert_pem` (by subject and signature).
pub fn issuer_sha256(cert_pem: &str, bundle_pem: &str) -> Option<String> {
    let der = certs_of(cert_pem).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    certs_of(bundle_pem).ok()?.into_iter().find_map(|ca_der| {
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).ok()?;
        (ca.subject().as_raw() == cert.issuer().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok())
        .then(|| sha256_hex(&ca_der))
    })
}

/// A CA bundle: `first` (the CA that signs), then the others.
pub fn bundle_of(first: &str, others: &[String]) -> String {
    let mut out = first.trim_end().to_owned();
    out.push('\n');
    for o in others {
        out.push_str(o.trim_end());
        out.push('\n');
    }
    out
}

/// Seconds since the epoch at which the first certificate of `pem` expires.
pub fn not_after_unix(pem: &str) -> Result<i64> {
    let der = &certs_of(pem)?[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("cannot read the certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// When a certificate was issued and when it expires (unix seconds). It is
/// valid from `BACKDATE_S` before it was issued (clocks differ).
pub fn lifetime_unix(pem: &str) -> Result<(i64, i64)> {
    let der = &certs_of(pem)?[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("cannot read the certificate: {e}"))?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp() + BACKDATE_S,
        v.not_after.timestamp(),
    ))
}

/// A host's live TLS material.
pub struct Tls {
    pub cluster_id: String,
    live: RwLock<Live>,
}

struct Live {
    /// What the heartbeat reports, computed once per change of material
    /// (the heartbeat path is hot).
    report: crate::api::TlsReport,
    bundle_pem: String,
    cert_pem: String,
    key_pem: String,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<rustls::client::WebPkiServerVerifier>,
    key: Arc<CertifiedKey>,
}

fn live(bundle_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Live> {
    let mut roots = RootCertStore::empty();
    for c in certs_of(bundle_pem).context("the CA bundle")? {
        roots
            .add(c)
            .map_err(|e| anyhow!("the CA bundle holds a certificate rustls refuses: {e}"))?;
    }
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| anyhow!("client certificate verifier: {e}"))?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| anyhow!("server certificate verifier: {e}"))?;
    let chain = certs_of(cert_pem).context("the host certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow!("the host key: {e}"))?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("the host key: {e}"))?;
    Ok(Live {
        bundle_pem: bundle_pem.to_owned(),
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
        client_verifier,
        server_verifier,
        key: Arc::new(CertifiedKey::new(chain, key)),
        report: crate::api::TlsReport {
            bundle_sha256: bundle_sha256(bundle_pem),
            cert_ca_sha256: issuer_sha256(cert_pem, bundle_pem).unwrap_or_default(),
            cert_not_after_unix: not_after_unix(cert_pem).unwrap_or_default(),
        },
    })
}

use rustls::pki_types::pem::PemObject;

impl Tls {
    pub fn new(cluster_id: &str, bundle_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Tls> {
        Ok(Tls {
            cluster_id: cluster_id.to_owned(),
            live: RwLock::new(live(bundle_pem, cert_pem, key_pem)?),
        })
    }

    /// Load `DIR/tls/`; `None` when there is no such directory yet.
    pub fn load(data_dir: &Path, cluster_id: &str) -> Result<Option<Tls>> {
        let dir = data_dir.join(TLS_DIR);
        if !dir.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).with_context(|| {
                format!(
                    "reading {}: restore the data dir's tls/ from a backup, or join this host again with an empty --data-dir",
                    dir.join(name).display()
                )
            })
        };
        let tls = Tls::new(
            cluster_id,
            &read(CA_FILE)?,
            &read(CERT_FILE)?,
            &read(KEY_FILE)?,
        )
        .with_context(|| format!("the TLS files in {}", dir.display()))?;
        Ok(Some(tls))
    }

    /// Write the material to `DIR/tls/` (0700; the key 0600), each file
    /// replaced atomically.
    pub fn store(data_dir: &Path, bundle_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = data_dir.join(TLS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        for (name, text, mode) in [
            (KEY_FILE, key_pem, 0o600),
            (CERT_FILE, cert_pem, 0o644),
            (CA_FILE, bundle_pem, 0o644),
        ] {
            crate::datadir::write_file_atomic(&dir.join(name), text.as_bytes(), mode)?;
        }
        Ok(())
    }

    /// Replace the live material (a renewed certificate, a new CA bundle).
    pub fn replace(&self, bundle_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
        let new = live(bundle_pem, cert_pem, key_pem)?;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }

    /// Trust `bundle_pem` from now on (CA rotation), keeping the
    /// certificate and key.
    pub fn set_bundle(&self, bundle_pem: &str) -> Result<()> {
        let (cert, key) = {
            let l = self.read();
            (l.cert_pem.clone(), l.key_pem.clone())
        };
        self.replace(bundle_pem, &cert, &key)
    }

    pub fn key_pem(&self) -> String {
        self.read().key_pem.clone()
    }

    /// What this host's material looks like (for the heartbeat).
    pub fn report(&self) -> crate::api::TlsReport {
        self.read().report.clone()
    }

    pub fn bundle_pem(&self) -> String {
        self.read().bundle_pem.clone()
    }

    pub fn cert_pem(&self) -> String {
        self.read().cert_pem.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Is the host certificate due for renewal (a third of its validity
    /// left, or signed by a CA no longer first in the bundle)?
    pub fn renew_due(&self, now_unix: i64, policy_s: u64) -> bool {
        let l = self.read();
        let Ok((issued, not_after)) = lifetime_unix(&l.cert_pem) else {
            return true;
        };
        let lifetime = (not_after - issued).max(1);
        let policy = i64::try_from(policy_s).unwrap_or(i64::MAX / 2);
        // Signed under a longer lifetime than the cluster's now: renewed
        // at once, so a shortened setting takes effect everywhere.
        let outlives = lifetime > policy.saturating_add((policy / 10).max(60));
        let signer = issuer_sha256(&l.cert_pem, &l.bundle_pem);
        let current = ca_sha256_hex(&l.bundle_pem).ok();
        not_after - now_unix < lifetime / 3 || signer != current || outlives
    }

    /// How often to check `renew_due`: a thirtieth of the certificate's
    /// lifetime, between a second and an hour.
    pub fn renew_check_s(&self) -> u64 {
        let l = self.read();
        lifetime_unix(&l.cert_pem)
            .map_or(1, |(issued, not_after)| {
                u64::try_from((not_after - issued) / 30).unwrap_or(1)
            })
            .clamp(1, 3_600)
    }

    /// The server side: this host's certificate, client certificates
    /// optional but verified against the CA when sent.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig> {
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(LiveClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(LiveResolver(self.clone())));
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(c)
    }

    /// A client that presents this host's certificate and trusts the
    /// cluster CA.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier::Live(self.clone())))
            .with_client_cert_resolver(Arc::new(LiveResolver(self.clone()))))
    }

    /// The identity of a peer's verified certificate chain.
    pub fn identity(&self, chain: Option<&[CertificateDer<'_>]>) -> PeerCert {
        match chain.and_then(|c| c.first()) {
            Some(der) => peer_of(der, &self.cluster_id),
            None => PeerCert::None,
        }
    }
}

/// A client (an operator's CLI) that trusts `ca_pem` and presents no
/// certificate.
pub fn operator_client_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    operator_client_config_with(ca_pem, None)
}

/// A client (an operator's CLI) that trusts `ca_pem` and presents
/// `identity` (certificate and key, PEM) if given.
pub fn operator_client_config_with(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs_of(ca_pem).context("the credential's CA")? {
        roots
            .add(c)
            .map_err(|e| anyhow!("the credential's CA certificate is not usable: {e}"))?;
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier::Fixed(verifier)));
    Ok(match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = certs_of(cert_pem).context("the client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| anyhow!("the client certificate's key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate does not go with its key")?
        }
    })
}

/// A client that accepts any server certificate: only to fetch the CA
/// bundle before joining, which the joiner then checks against the hash in
/// its token (nothing secret is sent over it).
pub fn unverified_client_config() -> Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth())
}

#[derive(Debug)]
struct LiveResolver(Arc<Tls>);

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().key.clone())
    }
}

impl ResolvesClientCert for LiveResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.cluster_id)
    }
}

#[derive(Debug)]
struct LiveClientVerifier(Arc<Tls>);

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let v = self.0.read().client_verifier.clone();
        v.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let v = self.0.read().client_verifier.clone();
        v.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let v = self.0.read().client_verifier.clone();
        v.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.read().client_verifier.supported_verify_schemes()
    }
}

/// Verifies that a server's certificate chains to the cluster CA; the name
/// it was reached by is not checked (see the module documentation).
#[derive(Debug)]
enum ClusterServerVerifier {
    Live(Arc<Tls>),
    Fixed(Arc<rustls::client::WebPkiServerVerifier>),
}

impl ClusterServerVerifier {
    fn inner(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        match self {
            ClusterServerVerifier::Live(t) => t.read().server_verifier.clone(),
            ClusterServerVerifier::Fixed(v) => v.clone(),
        }
    }
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_material(ca: &CaMaterial, cluster: &str, host: &str, role: Role) -> (String, String) {
        let key = new_host_key().unwrap();
        let csr = csr(&key, host).unwrap();
        let cert = sign_host(
            ca,
            &csr,
            cluster,
            host,
            role,
            &["10.0.0.1".parse().unwrap()],
            HOST_CERT_VALID_S,
        )
        .unwrap();
        (cert, key)
    }

    #[test]
    fn a_signed_host_certificate_names_its_host_and_role_in_its_cluster_only() {
        let ca = new_ca("c1").unwrap();
        let (cert, _) = host_material(&ca, "c1", "h2", Role::Worker);
        let der = &certs_of(&cert).unwrap()[0];
        assert_eq!(
            identity_of(der, "c1"),
            Some(CertIdentity {
                cluster_id: "c1".into(),
                host: "h2".into(),
                role: Role::Worker
            })
        );
        assert_eq!(
            identity_of(der, "c2"),
            None,
            "another cluster's certificate"
        );
        let days = (not_after_unix(&cert).unwrap()
            - time::OffsetDateTime::now_utc().unix_timestamp())
            / 86_400;
        assert!(
            (HOST_CERT_VALID_DAYS - 1..=HOST_CERT_VALID_DAYS).contains(&days),
            "{days}"
        );
    }

    #[test]
    fn a_join_pins_only_the_ca_whose_hash_the_token_names() {
        let ca = new_ca("c1").unwrap();
        let other = new_ca("c1").unwrap();
        let hash = ca_sha256_hex(&ca.cert_pem).unwrap();
        assert_eq!(hash.len(), 64);
        let bundle = format!("{}{}", other.cert_pem, ca.cert_pem);
        let pinned = pinned_ca(&bundle, &hash).unwrap();
        assert_eq!(ca_sha256_hex(&pinned).unwrap(), hash);
        assert_eq!(pinned_ca(&other.cert_pem, &hash), None);
        assert_eq!(pinned_ca("garbage", &hash), None);
    }

    #[test]
    fn a_bad_csr_is_refused_with_a_reason() {
        let ca = new_ca("c1").unwrap();
        let e = sign_host(&ca, "not a csr", "c1", "h1", Role::Manager, &[], 60).unwrap_err();
        assert!(
            format!("{e:#}").contains("certificate signing request"),
            "{e:#}"
        );
    }

    #[test]
    fn an_operator_certificate_names_its_record_and_is_for_clients_only() {
        let ca = new_ca("c1").unwrap();
        let key = new_host_key().unwrap();
        let csr = csr(&key, "alice").unwrap();
        let id = "00000000000000aa";
        let cert = sign_user(&ca, &csr, "c1", id, "alice", 3_600_000).unwrap();
        let der = &certs_of(&cert).unwrap()[0];
        assert_eq!(
            peer_of(der, "c1"),
            PeerCert::User(UserCert {
                cluster_id: "c1".into(),
                id: id.into(),
                cert_sha256: sha256_hex(der),
            })
        );
        assert_eq!(identity_of(der, "c1"), None, "it is no host certificate");
        assert_eq!(peer_of(der, "c2"), PeerCert::None, "another cluster");
        let (_, x509) = x509_parser::parse_x509_certificate(der).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let left =
            not_after_unix(&cert).unwrap() - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((3_500..=3_600).contains(&left), "{left}");
    }

    #[test]
    fn renewal_is_due_once_a_third_of_the_validity_is_left() {
        let ca = new_ca("c1").unwrap();
        let (cert, key) = host_material(&ca, "c1", "h1", Role::Manager);
        let tls = Tls::new("c1", &ca.cert_pem, &cert, &key).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let p = HOST_CERT_VALID_S;
        assert!(!tls.renew_due(now, p));
        assert!(!tls.renew_due(now + HOST_CERT_VALID_DAYS * 86_400 * 2 / 3 - 86_400, p));
        assert!(tls.renew_due(now + HOST_CERT_VALID_DAYS * 86_400 * 2 / 3 + 86_400, p));
        assert_eq!(tls.renew_check_s(), 3_600);
        // The cluster shortened the lifetime: renewed at once.
        assert!(tls.renew_due(now, 86_400));
        assert!(!tls.renew_due(now, p * 2), "a longer setting waits");
        // A one-minute certificate: due after 40 s, checked every 2 s.
        let key = new_host_key().unwrap();
        let short = sign_host(
            &ca,
            &csr(&key, "h1").unwrap(),
            "c1",
            "h1",
            Role::Manager,
            &[],
            60,
        )
        .unwrap();
        let tls = Tls::new("c1", &ca.cert_pem, &short, &key).unwrap();
        assert!(!tls.renew_due(now + 35, 60));
        assert!(tls.renew_due(now + 45, 60));
        assert_eq!(tls.renew_check_s(), 2);
    }

    #[test]
    fn files_are_private_where_they_hold_a_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("c1").unwrap();
        let (cert, key) = host_material(&ca, "c1", "h1", Role::Manager);
        Tls::store(dir.path(), &ca.cert_pem, &cert, &key).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(TLS_DIR), 0o700);
        assert_eq!(mode(&format!("{TLS_DIR}/{KEY_FILE}")), 0o600);
        let back = Tls::load(dir.path(), "c1").unwrap().unwrap();
        assert_eq!(back.cert_pem(), cert);
    }
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    #[test]
    fn a_certificate_from_the_old_ca_is_due_once_the_new_one_signs() {
        let old = new_ca("c1").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let new = new_ca("c1").unwrap();
        let key = new_host_key().unwrap();
        let cert = sign_host(
            &old,
            &csr(&key, "h1").unwrap(),
            "c1",
            "h1",
            Role::Worker,
            &[],
            HOST_CERT_VALID_S,
        )
        .unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Start: the new CA is trusted, the old one still signs.
        let tls = Tls::new(
            "c1",
            &bundle_of(&old.cert_pem, std::slice::from_ref(&new.cert_pem)),
            &cert,
            &key,
        )
        .unwrap();
        assert!(!tls.renew_due(now, HOST_CERT_VALID_S));
        let r = tls.report();
        assert_eq!(r.cert_ca_sha256, ca_sha256_hex(&old.cert_pem).unwrap());
        // Switch: the new one signs; the old certificate still verifies,
        // and is due for renewal.
        tls.set_bundle(&bundle_of(
            &new.cert_pem,
            std::slice::from_ref(&old.cert_pem),
        ))
        .unwrap();
        assert!(tls.renew_due(now, HOST_CERT_VALID_S));
        assert_ne!(tls.report().bundle_sha256, r.bundle_sha256);
        assert_eq!(issuer_sha256(&cert, &new.cert_pem), None);
    }
}
