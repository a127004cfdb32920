//! Who is at the other end of a request, as the TLS layer saw it.
use haven_core::model::Role;

/// What the client certificate of the connection names, if it sent one
/// that chains to the cluster CA (request extension).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerCert {
    /// No certificate, or one that names nothing of this cluster.
    #[default]
    None,
    /// A host certificate.
    Host(CertIdentity),
    /// An operator's client certificate (`haven cert create`).
    User(UserCert),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub cluster_id: String,
    /// The host name the certificate was issued to.
    pub host: String,
    pub role: Role,
}

/// An operator's client certificate: the credential record it names and
/// the hash that must match that record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCert {
    pub cluster_id: String,
    /// The id of its record in the replicated token store.
    pub id: String,
    /// SHA-256 of the certificate (DER), hex.
    pub cert_sha256: String,
}
