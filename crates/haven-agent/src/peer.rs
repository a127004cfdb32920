//! Who is at the other end of a request, as the TLS layer saw it.
use haven_core::model::Role;
/// The identity in the client certificate of the connection, if it sent
/// one that chains to the cluster CA (request extension).
#[derive(Clone, Debug, Default)]
pub struct PeerCert(pub Option<CertIdentity>);
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub cluster_id: String,
    /// The host name the certificate was issued to.
    pub host: String,
    pub role: Role,
}
