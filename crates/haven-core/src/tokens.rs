//! Tokens: API tokens (bearer credentials of operators, with a role) and
//! join tokens (one certificate signing for a joining host), as the
//! replicated state keeps them (secrets only as SHA-256) and as they are
//! written out (`hvt.<id>.<secret>`, `HVN2.<ca sha256>.<id>.<secret>`).
//! Pure: the caller brings the random secret and the time.

use crate::model::Role;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Most tokens the replicated state keeps (revoked, used and expired ones
/// are dropped first when a new one needs room).
pub const TOKENS_MAX: usize = 1_000;
/// A token id: 8 random bytes, 16 lowercase hex digits.
pub const TOKEN_ID_HEX_LEN: usize = 16;
/// A token secret: 32 random bytes, 64 lowercase hex digits.
pub const TOKEN_SECRET_HEX_LEN: usize = 64;
/// The SHA-256 of the cluster CA certificate (DER) in a join token.
pub const CA_SHA256_HEX_LEN: usize = 64;
/// Longest token name (`root@<host>` fits: host names are shorter).
pub const TOKEN_NAME_LEN_MAX: usize = 96;
/// Longest `created_by` / `by` kept (who and from where).
pub const TOKEN_BY_LEN_MAX: usize = 200;
pub const API_TOKEN_PREFIX: &str = "hvt";
pub const JOIN_TOKEN_PREFIX: &str = "HVN2";

/// What an API token may do; each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    Viewer,
    Operator,
    Admin,
}

impl ApiRole {
    /// Whether a caller with this role may do what `needed` may.
    pub fn includes(self, needed: ApiRole) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Admin => "admin",
            ApiRole::Operator => "operator",
            ApiRole::Viewer => "viewer",
        }
    }
}

impl fmt::Display for ApiRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum TokenKind {
    /// A bearer credential of an operator or a program.
    Api { role: ApiRole },
    /// Buys a host certificate for a joining host of `role`; `once`: a
    /// single join.
    Join { role: Role, once: bool },
    /// An operator's client certificate, signed by the cluster CA for the
    /// holder's own key. The record's `secret_sha256` is the SHA-256 of
    /// the certificate (DER): the certificate names the record by its id,
    /// and only that very certificate matches it. Revoked like a token.
    Cert { role: ApiRole },
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Api { role } => write!(f, "{role} API token"),
            TokenKind::Join { role, once: true } => write!(f, "one-time {role} join token"),
            TokenKind::Join { role, once: false } => write!(f, "{role} join token"),
            TokenKind::Cert { role } => write!(f, "{role} client certificate"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub kind: TokenKind,
    /// SHA-256 of the 32 secret bytes, hex. The secret itself is never
    /// stored.
    pub secret_sha256: String,
    pub created_at_ms: u64,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
    /// A join token has bought a certificate.
    #[serde(default)]
    pub used: bool,
    /// Who created it, and from where.
    pub created_by: String,
}

impl TokenRecord {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| now_ms >= e)
    }

    /// No longer usable: revoked, expired, or a one-time join token used.
    pub fn is_spent(&self, now_ms: u64) -> bool {
        self.revoked
            || self.is_expired(now_ms)
            || (self.used && matches!(self.kind, TokenKind::Join { once: true, .. }))
    }

    /// What is wrong with the record itself (a command carrying it is
    /// refused), naming the field.
    pub fn check(&self) -> Result<(), String> {
        check_hex("id", &self.id, TOKEN_ID_HEX_LEN)?;
        check_hex(
            "secret_sha256",
            &self.secret_sha256,
            TOKEN_SECRET_HEX_LEN, // a SHA-256 is 32 bytes, like the secret
        )?;
        check_token_name(&self.name)?;
        if self.created_by.is_empty() || self.created_by.len() > TOKEN_BY_LEN_MAX {
            return Err(format!(
                "field \"created_by\": 1-{TOKEN_BY_LEN_MAX} bytes; got {}",
                self.created_by.len()
            ));
        }
        if self.revoked || self.used {
            return Err("a new token cannot be revoked or used already".into());
        }
        if self.expires_at_ms.is_some_and(|e| e <= self.created_at_ms) {
            return Err("field \"expires_at_ms\": must be after created_at_ms".into());
        }
        Ok(())
    }
}

/// Why a presented token is not accepted. The HTTP layer decides how much
/// of this a caller is told (an unknown id and a wrong secret look alike).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no such token")]
    Unknown,
    #[error("wrong token secret")]
    WrongSecret,
    #[error("the token {name:?} expired at {expired_at_ms} ms")]
    Expired { name: String, expired_at_ms: u64 },
    #[error("the token {name:?} was revoked")]
    Revoked { name: String },
    #[error("the one-time token {name:?} was used already")]
    Used { name: String },
}

impl TokenError {
    /// A short stable word, for counting refusals per reason.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Unknown => "unknown",
            TokenError::WrongSecret => "wrong_secret",
            TokenError::Expired { .. } => "expired",
            TokenError::Revoked { .. } => "revoked",
            TokenError::Used { .. } => "used",
        }
    }
}

/// `name` for a token: 1-`TOKEN_NAME_LEN_MAX` characters of a-z, A-Z,
/// 0-9, '.', '_', '-', '@'.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > TOKEN_NAME_LEN_MAX || !name.chars().all(ok) {
        return Err(format!(
            "token name: must be 1-{TOKEN_NAME_LEN_MAX} characters of a-z, A-Z, 0-9, '.', '_', '-', '@'; got {:?}",
            crate::spec::shorten(name, 40)
        ));
    }
    Ok(())
}

fn check_hex(field: &str, text: &str, len: usize) -> Result<(), String> {
    if text.len() != len || !is_lower_hex(text) {
        return Err(format!(
            "field {field:?}: expected {len} lowercase hex digits; got {} characters",
            text.chars().count()
        ));
    }
    Ok(())
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !is_lower_hex(text) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The SHA-256 of a token secret (its 32 bytes, given as 64 hex digits),
/// as stored. A secret that is not 64 hex digits hashes as its text, so
/// that it can never match a stored hash by accident of decoding.
pub fn secret_sha256(secret_hex: &str) -> String {
    let bytes = match unhex(secret_hex) {
        Some(b) if b.len() * 2 == TOKEN_SECRET_HEX_LEN => b,
        _ => secret_hex.as_bytes().to_vec(),
    };
    hex(&Sha256::digest(bytes))
}

/// The SHA-256 of any bytes (a CA certificate's DER), hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Equal, in a time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Turn random bytes into a token id and secret (hex).
pub fn id_and_secret(id_bytes: [u8; 8], secret_bytes: [u8; 32]) -> (String, String) {
    (hex(&id_bytes), hex(&secret_bytes))
}

/// Why a token's text cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("the token is empty")]
    Empty,
    #[error("expected {expected}; this token starts with {found:?}")]
    Prefix {
        expected: &'static str,
        found: String,
    },
    #[error("expected {expected} parts separated by '.', found {found}: copy the whole token")]
    Parts { expected: usize, found: usize },
    #[error("its {part} must be {len} lowercase hex digits (found {found} characters): copy the whole token")]
    Hex {
        part: &'static str,
        len: usize,
        found: usize,
    },
}

fn split_token<'a>(
    text: &'a str,
    prefix: &'static str,
    expected: &'static str,
    parts: usize,
) -> Result<Vec<&'a str>, TokenParseError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TokenParseError::Empty);
    }
    let found: Vec<&str> = text.split('.').collect();
    if found[0] != prefix {
        return Err(TokenParseError::Prefix {
            expected,
            found: crate::spec::shorten(found[0], 12),
        });
    }
    if found.len() != parts {
        return Err(TokenParseError::Parts {
            expected: parts,
            found: found.len(),
        });
    }
    Ok(found)
}

fn hex_part(part: &'static str, text: &str, len: usize) -> Result<String, TokenParseError> {
    if text.len() != len || !is_lower_hex(text) {
        return Err(TokenParseError::Hex {
            part,
            len,
            found: text.chars().count(),
        });
    }
    Ok(text.to_owned())
}

/// `hvt.<id>.<secret>`: an operator's bearer credential.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken {{ id: {:?}, secret: <hidden> }}", self.id)
    }
}

impl ApiToken {
    pub fn parse(text: &str) -> Result<ApiToken, TokenParseError> {
        let p = split_token(
            text,
            API_TOKEN_PREFIX,
            "an API token (hvt.<id>.<secret>)",
            3,
        )?;
        Ok(ApiToken {
            id: hex_part("id", p[1], TOKEN_ID_HEX_LEN)?,
            secret: hex_part("secret", p[2], TOKEN_SECRET_HEX_LEN)?,
        })
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{API_TOKEN_PREFIX}.{}.{}", self.id, self.secret)
    }
}

/// `HVN2.<sha256 of the CA certificate DER>.<id>.<secret>`: the joiner
/// checks the CA against the hash before it sends the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_sha256: String,
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken {{ ca_sha256: {:?}, id: {:?}, secret: <hidden> }}",
            self.ca_sha256, self.id
        )
    }
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, TokenParseError> {
        let p = split_token(
            text,
            JOIN_TOKEN_PREFIX,
            "a join token (HVN2.<ca sha256>.<id>.<secret>)",
            4,
        )?;
        Ok(JoinToken {
            ca_sha256: hex_part("CA hash", p[1], CA_SHA256_HEX_LEN)?,
            id: hex_part("id", p[2], TOKEN_ID_HEX_LEN)?,
            secret: hex_part("secret", p[3], TOKEN_SECRET_HEX_LEN)?,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{JOIN_TOKEN_PREFIX}.{}.{}.{}",
            self.ca_sha256, self.id, self.secret
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "0123456789abcdef";

    fn secret() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn api_and_join_tokens_read_back_what_they_write() {
        let a = ApiToken {
            id: ID.into(),
            secret: secret(),
        };
        assert_eq!(ApiToken::parse(&a.to_string()).unwrap(), a);
        let j = JoinToken {
            ca_sha256: "c".repeat(64),
            id: ID.into(),
            secret: secret(),
        };
        assert_eq!(JoinToken::parse(&format!(" {j}\n")).unwrap(), j);
        assert!(!format!("{a:?}{j:?}").contains(&secret()), "Debug hides it");
    }

    #[test]
    fn a_bad_token_is_refused_naming_what_is_wrong() {
        let e = |t: &str| ApiToken::parse(t).unwrap_err().to_string();
        assert!(e("").contains("empty"));
        assert!(e("HVN2.x.y.z").contains("API token"), "{}", e("HVN2.x.y.z"));
        assert!(e("hvt.abc").contains("3 parts"), "{}", e("hvt.abc"));
        let short = format!("hvt.{ID}.abc");
        assert!(e(&short).contains("secret must be 64"), "{}", e(&short));
        let upper = format!("hvt.{}.{}", ID.to_uppercase(), secret());
        assert!(e(&upper).contains("id must be 16"), "{}", e(&upper));
        let j = JoinToken::parse(&format!("HVN2.abc.{ID}.{}", secret())).unwrap_err();
        assert!(j.to_string().contains("CA hash must be 64"), "{j}");
    }

    #[test]
    fn the_stored_hash_is_of_the_secret_bytes_and_never_the_secret() {
        let h = secret_sha256(&secret());
        assert_eq!(h.len(), 64);
        assert_ne!(h, secret());
        assert_eq!(h, sha256_hex(&[0xab; 32]));
        assert_ne!(secret_sha256("AB"), secret_sha256("ab"));
    }

    #[test]
    fn roles_include_the_ones_below() {
        assert!(ApiRole::Admin.includes(ApiRole::Operator));
        assert!(ApiRole::Operator.includes(ApiRole::Viewer));
        assert!(!ApiRole::Viewer.includes(ApiRole::Operator));
        assert!(!ApiRole::Operator.includes(ApiRole::Admin));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,200}") {
            let _ = ApiToken::parse(&text);
            let _ = JoinToken::parse(&text);
            let _ = secret_sha256(&text);
        }

        #[test]
        fn parsers_never_panic_on_near_misses(
            parts in proptest::collection::vec("[0-9a-fA-F.é]{0,70}", 0..6),
        ) {
            let text = parts.join(".");
            let _ = ApiToken::parse(&format!("hvt.{text}"));
            let _ = JoinToken::parse(&format!("HVN2.{text}"));
        }
    }
}
