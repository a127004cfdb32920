//! The token routes (admin only, `auth::ROUTES`): create (the text shown
//! once), list (never a secret), revoke; and operators' client
//! certificates (`/v1/certs`), whose records live in the same store and are
//! listed and revoked with the tokens. The store itself is in the
//! replicated state (`haven_core::tokens`).

#![allow(clippy::result_large_err)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use haven_core::model::Role;
use haven_core::state::{Command, CommandResult};
use haven_core::tokens::{ApiRole, JoinToken, TokenKind, TokenRecord};
use std::sync::Arc;

use crate::api::*;
use crate::auth::Authenticated;
use crate::node::Node;
use crate::server::{
    error, parse_body, propose, unless_leader, Body, Reply, REQUEST_BODY_BYTES_MAX,
};

/// A join token's lifetime unless `--ttl` says otherwise.
pub const JOIN_TOKEN_TTL_MS_DEFAULT: u64 = 24 * 3600 * 1000;
/// Longest lifetime a token may be given (`--ttl`).
pub const TOKEN_TTL_MS_MAX: u64 = 10 * 365 * 24 * 3600 * 1000;

pub fn view(t: &TokenRecord) -> TokenView {
    let (kind, role, once) = match t.kind {
        TokenKind::Api { role } => ("api", role.to_string(), false),
        TokenKind::Join { role, once } => ("join", role.to_string(), once),
        TokenKind::Cert { role } => ("cert", role.to_string(), false),
    };
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        kind: kind.into(),
        role,
        once,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        revoked: t.revoked,
        used: t.used,
        created_by: t.created_by.clone(),
    }
}

/// What `role` and `once` ask for, or what is wrong with them.
pub fn kind_of(role: &str, once: bool) -> Result<TokenKind, String> {
    let api = |role| {
        if once {
            Err("--once is for join tokens (--role manager or worker)".to_string())
        } else {
            Ok(TokenKind::Api { role })
        }
    };
    match role {
        "admin" => api(ApiRole::Admin),
        "operator" => api(ApiRole::Operator),
        "viewer" => api(ApiRole::Viewer),
        "manager" => Ok(TokenKind::Join {
            role: Role::Manager,
            once,
        }),
        "worker" => Ok(TokenKind::Join {
            role: Role::Worker,
            once,
        }),
        other => Err(format!(
            "--role {:?}: expected admin, operator or viewer (API tokens), or manager or worker (join tokens)",
            haven_core::spec::shorten(other, 20)
        )),
    }
}

pub async fn create(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: TokenCreateRequest = match parse_body("/v1/tokens", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = unless_leader(&node, &headers, "/v1/tokens", &req).await {
        return r;
    }
    let kind = match kind_of(&req.role, req.once) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let ttl_ms = match (req.ttl_ms, kind) {
        (Some(t), _) if t == 0 || t > TOKEN_TTL_MS_MAX => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "--ttl: between 1 ms and {} days",
                    TOKEN_TTL_MS_MAX / 86_400_000
                ),
            )
        }
        (Some(t), _) => Some(t),
        (None, TokenKind::Join { .. }) => Some(JOIN_TOKEN_TTL_MS_DEFAULT),
        (None, TokenKind::Api { .. } | TokenKind::Cert { .. }) => None,
    };
    let ca_sha256 = crate::auth::cluster_ca_sha256(&node);
    if matches!(kind, TokenKind::Join { .. }) && ca_sha256.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "join tokens pin the cluster CA, and this cluster has none yet; use the join token printed at bootstrap",
        );
    }
    let (id, secret) = crate::auth::random_id_and_secret();
    let name = req.name.clone().unwrap_or_else(|| match kind {
        TokenKind::Api { role } | TokenKind::Cert { role } => format!("{role}-{}", &id[..6]),
        TokenKind::Join { role, .. } => format!("join-{role}-{}", &id[..6]),
    });
    if let Err(m) = haven_core::tokens::check_token_name(&name) {
        return error(StatusCode::BAD_REQUEST, format!("--name: {m}"));
    }
    let now = node.clock.wall_ms();
    let record = TokenRecord {
        id: id.clone(),
        name,
        kind,
        secret_sha256: haven_core::tokens::secret_sha256(&secret),
        created_at_ms: now,
        expires_at_ms: ttl_ms.map(|t| now.saturating_add(t)),
        revoked: false,
        used: false,
        created_by: haven_core::spec::shorten(&auth.audit(), haven_core::tokens::TOKEN_BY_LEN_MAX),
    };
    let text = match kind {
        TokenKind::Api { .. } | TokenKind::Cert { .. } => {
            haven_core::tokens::ApiToken { id, secret }.to_string()
        }
        TokenKind::Join { .. } => JoinToken {
            ca_sha256,
            id,
            secret,
        }
        .to_string(),
    };
    let shown = view(&record);
    match propose(&node, Command::CreateToken { record, at_ms: now }).await {
        Ok(CommandResult::Rejected(m)) => error(StatusCode::CONFLICT, m),
        Ok(_) => Json(TokenCreateResponse {
            token: text,
            view: shown,
        })
        .into_response(),
        Err(r) => r,
    }
}

pub async fn list(State(node): State<Arc<Node>>, headers: HeaderMap) -> Reply {
    let Some(c) = node.consensus.as_ref() else {
        return crate::server::forward(&node, &headers, reqwest::Method::GET, "/v1/tokens", None)
            .await;
    };
    let tokens = c.read(|s| s.tokens.values().map(view).collect());
    Json(TokenListResponse { tokens }).into_response()
}

pub async fn revoke(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: TokenRevokeRequest =
        match parse_body("/v1/tokens/revoke", REQUEST_BODY_BYTES_MAX, body) {
            Ok(r) => r,
            Err(r) => return r,
        };
    if let Some(r) = unless_leader(&node, &headers, "/v1/tokens/revoke", &req).await {
        return r;
    }
    let c = node.consensus.as_ref().expect("leader has consensus");
    let Some(id) = c.read(|s| s.token(&req.token).map(|t| t.id.clone())) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no token named {:?} (or with that id); `haven token list` shows them",
                haven_core::spec::shorten(&req.token, 40)
            ),
        );
    };
    let cmd = Command::RevokeToken {
        name_or_id: id.clone(),
        by: auth.audit(),
        at_ms: node.clock.wall_ms(),
    };
    match propose(&node, cmd).await {
        Ok(CommandResult::Rejected(m)) => error(StatusCode::NOT_FOUND, m),
        Ok(_) => match c.read(|s| s.tokens.get(&id).map(view)) {
            Some(revoked) => Json(TokenRevokeResponse { revoked }).into_response(),
            None => error(StatusCode::NOT_FOUND, "the token is gone"),
        },
        Err(r) => r,
    }
}

/// `POST /v1/certs`: an operator's client certificate. The caller sends a
/// signing request for its own key; the leader signs a certificate naming
/// a new credential record (`TokenKind::Cert`) and commits the record with
/// the certificate's hash. The certificate works on every manager until it
/// expires or its record is revoked (`haven token revoke NAME`).
pub async fn create_cert(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: CertCreateRequest = match parse_body("/v1/certs", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = unless_leader(&node, &headers, "/v1/certs", &req).await {
        return r;
    }
    let role = match kind_of(&req.role, false) {
        Ok(TokenKind::Api { role }) => role,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "--role {:?}: a client certificate is for admin, operator or viewer",
                    haven_core::spec::shorten(&req.role, 20)
                ),
            )
        }
    };
    use crate::pki::{USER_CERT_VALID_MS_DEFAULT, USER_CERT_VALID_MS_MAX, USER_CERT_VALID_MS_MIN};
    let ttl_ms = req.ttl_ms.unwrap_or(USER_CERT_VALID_MS_DEFAULT);
    if !(USER_CERT_VALID_MS_MIN..=USER_CERT_VALID_MS_MAX).contains(&ttl_ms) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "--ttl: a client certificate lives between {} s and {} days",
                USER_CERT_VALID_MS_MIN / 1_000,
                USER_CERT_VALID_MS_MAX / 86_400_000
            ),
        );
    }
    if let Err(m) = haven_core::tokens::check_token_name(&req.name) {
        return error(StatusCode::BAD_REQUEST, format!("--name: {m}"));
    }
    let c = node.consensus.as_ref().expect("leader has consensus");
    if let Some(t) = c.read(|s| s.token(&req.name).filter(|t| !t.revoked).cloned()) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "a credential named {:?} exists ({}); revoke it first (`haven token revoke {}`) or choose another --name",
                t.name, t.kind, t.name
            ),
        );
    }
    let (ca, bundle) = match crate::server::signing_ca(&node) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (id, _) = crate::auth::random_id_and_secret();
    let cert_pem = match crate::pki::sign_user(
        &ca,
        &req.csr_pem,
        &node.identity.cluster_id,
        &id,
        &req.name,
        ttl_ms,
    ) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("csr_pem: {e:#}")),
    };
    let der = match crate::pki::certs_of(&cert_pem) {
        Ok(c) if !c.is_empty() => c[0].clone(),
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the signed certificate is unreadable",
            )
        }
    };
    let not_after_ms = crate::pki::not_after_unix(&cert_pem)
        .map_or(0, |s| u64::try_from(s).unwrap_or(0).saturating_mul(1_000));
    let now = node.clock.wall_ms();
    let record = TokenRecord {
        id,
        name: req.name.clone(),
        kind: TokenKind::Cert { role },
        secret_sha256: crate::pki::sha256_hex(&der),
        created_at_ms: now,
        expires_at_ms: Some(not_after_ms.max(now + 1)),
        revoked: false,
        used: false,
        created_by: haven_core::spec::shorten(&auth.audit(), haven_core::tokens::TOKEN_BY_LEN_MAX),
    };
    let shown = view(&record);
    match propose(&node, Command::CreateToken { record, at_ms: now }).await {
        Ok(CommandResult::Rejected(m)) => error(StatusCode::CONFLICT, m),
        Ok(_) => Json(CertCreateResponse {
            cert_pem,
            ca_pem: bundle,
            view: shown,
        })
        .into_response(),
        Err(r) => r,
    }
}
