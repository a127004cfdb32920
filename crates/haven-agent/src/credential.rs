//! The CLI's credential: which agent to talk to, the cluster CA to trust,
//! and either the API token to send or a client certificate and its key
//! (`haven cert create`). A JSON file, mode 0600 in a directory 0700
//! (`haven login` writes one; bootstrap writes root's `admin.json`).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where `haven login` saves the credential, under the home directory.
pub const USER_CREDENTIAL_PATH: &str = ".config/haven/credential.json";
/// The admin credential of the default data dir, which root reads on a
/// manager host.
pub const HOST_ADMIN_CREDENTIAL: &str = "/var/lib/haven/admin.json";
/// Largest credential file read.
pub const CREDENTIAL_BYTES_MAX: u64 = 64 * 1024;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// An agent of the cluster, `HOST:PORT`.
    pub server: String,
    /// The cluster CA certificate (PEM) the server must chain to; empty
    /// until the cluster has one.
    #[serde(default)]
    pub ca_pem: String,
    /// `hvt.<id>.<secret>`; empty with a client certificate.
    #[serde(default)]
    pub token: String,
    /// An operator's client certificate (PEM) and its key, instead of a
    /// token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credential {{ server: {:?}, ca_pem: {} bytes, token: <hidden>, cert_pem: {} bytes, key_pem: <hidden> }}",
            self.server,
            self.ca_pem.len(),
            self.cert_pem.as_ref().map_or(0, |c| c.len())
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the credential {path}: {source}; run `haven login --server ADDR --token TOKEN`, or pass --credential FILE")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the credential {path} is not valid: {detail}; write it again with `haven login --server ADDR --token TOKEN`")]
    Invalid { path: PathBuf, detail: String },
    #[error("cannot write the credential {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Credential {
    pub fn load(path: &Path) -> Result<Credential, CredentialError> {
        use std::io::Read;
        let read = |source| CredentialError::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(CREDENTIAL_BYTES_MAX)
            .read_to_string(&mut text)
            .map_err(read)?;
        let invalid = |detail: String| CredentialError::Invalid {
            path: path.to_owned(),
            detail,
        };
        let cred: Credential = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        match (&cred.cert_pem, &cred.key_pem, cred.token.is_empty()) {
            (None, None, _) => {
                haven_core::tokens::ApiToken::parse(&cred.token)
                    .map_err(|e| invalid(format!("field \"token\": {e}")))?;
            }
            (Some(_), Some(_), true) => {}
            (Some(_), Some(_), false) => {
                return Err(invalid(
                    "it holds both a token and a client certificate; keep one".into(),
                ))
            }
            _ => {
                return Err(invalid(
                    "fields \"cert_pem\" and \"key_pem\" go together".into(),
                ))
            }
        }
        if cred.server.is_empty() {
            return Err(invalid("field \"server\" is empty".into()));
        }
        Ok(cred)
    }

    /// Write it (mode 0600, its directory created 0700), replacing any
    /// file there at once.
    pub fn save(&self, path: &Path) -> Result<(), CredentialError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let write = |source| CredentialError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("credential")
        ));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write)?;
        let json = serde_json::to_vec_pretty(self).expect("a credential serializes");
        f.write_all(&json).map_err(write)?;
        f.sync_all().map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)
    }
}

/// Which credential the CLI uses: `explicit` (`--credential`, or
/// `HAVEN_CREDENTIAL`), else the user's (`haven login`), else this host's
/// admin credential if readable. `None`: no credential at all.
pub fn find(explicit: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    let user = home.map(|h| h.join(USER_CREDENTIAL_PATH));
    [user, Some(PathBuf::from(HOST_ADMIN_CREDENTIAL))]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

/// The HTTP client of a CLI command: trusts the credential's CA and sends
/// its token on every request.
pub fn client_builder(
    cred: &Credential,
    timeout_ms: Option<u64>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut headers = reqwest::header::HeaderMap::new();
    if !cred.token.is_empty() {
        if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", cred.token))
        {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    if cred.ca_pem.trim().is_empty() {
        anyhow::bail!(
            "the credential for {} holds no cluster CA (ca_pem): save it again with `haven login --server {} --token …`",
            cred.server,
            cred.server
        );
    }
    let identity = cred.cert_pem.as_deref().zip(cred.key_pem.as_deref());
    Ok(
        crate::rpc::operator_client_builder(timeout_ms, &cred.ca_pem, identity)
            .map_err(|e| {
                anyhow::anyhow!(
                    "the credential for {}: {e:#}; log in again with `haven login`",
                    cred.server
                )
            })?
            .default_headers(headers),
    )
}

pub fn client(cred: &Credential, timeout_ms: u64) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(cred, Some(timeout_ms))?.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cred() -> Credential {
        Credential {
            server: "127.0.0.1:7440".into(),
            ca_pem: String::new(),
            token: format!("hvt.{}.{}", "a".repeat(16), "b".repeat(64)),
            cert_pem: None,
            key_pem: None,
        }
    }

    #[test]
    fn a_credential_is_saved_private_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cfg/haven/credential.json");
        cred().save(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(Credential::load(&path).unwrap(), cred());
        assert!(!format!("{:?}", cred()).contains(&"b".repeat(64)));
    }

    #[test]
    fn a_bad_credential_names_the_file_and_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.json");
        let e = Credential::load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.json") && e.contains("haven login"), "{e}");
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, r#"{"server":"h:1","token":"secret"}"#).unwrap();
        let e = Credential::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("\"token\""), "{e}");
        // A client certificate needs its key, and not a token beside it.
        std::fs::write(&bad, r#"{"server":"h:1","cert_pem":"x"}"#).unwrap();
        let e = Credential::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("\"cert_pem\" and \"key_pem\" go together"),
            "{e}"
        );
        let both = format!(
            r#"{{"server":"h:1","cert_pem":"x","key_pem":"y","token":"hvt.{}.{}"}}"#,
            "a".repeat(16),
            "b".repeat(64)
        );
        std::fs::write(&bad, both).unwrap();
        let e = Credential::load(&bad).unwrap_err().to_string();
        assert!(e.contains("keep one"), "{e}");
    }

    #[test]
    fn the_explicit_credential_comes_first_then_the_users() {
        let d = tempfile::tempdir().unwrap();
        let explicit = d.path().join("x.json");
        assert_eq!(find(Some(&explicit), Some(d.path())), Some(explicit));
        let user = d.path().join(USER_CREDENTIAL_PATH);
        cred().save(&user).unwrap();
        assert_eq!(find(None, Some(d.path())), Some(user));
    }
}
