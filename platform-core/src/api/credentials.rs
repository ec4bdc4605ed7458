//! REST handlers of client credentials: basic (user name and password) and X.509 (by
//! certificate fingerprint), with their state changes. A credential that becomes
//! suspended or revoked ends the live sessions that authenticated with it at once
//! (docs/protocol.md §6).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::manage::{state_change, StateBody};
use super::{rfc3339, storage, Api, ApiError};
use crate::ccm::{self, Identity, Kind, State as CredState};

type JsonResult = Result<Json<Value>, ApiError>;

fn credential_json(c: &ccm::CredentialInfo, kind: Kind) -> Value {
    let key = match kind {
        Kind::Basic => "username",
        Kind::X509 => "fingerprint",
    };
    let mut v = json!({key: c.id, "state": c.state, "createdAt": rfc3339(c.created_ms)});
    if kind == Kind::Basic {
        // Unbound credentials show as every application.
        let scope = c.scope.clone().unwrap_or_else(|| ccm::scope::Scope {
            applications: vec![ccm::scope::ALL.into()],
            endpoints: vec![],
        });
        v["applications"] = json!(scope.applications);
        v["endpoints"] = json!(scope.endpoints);
    }
    if let (Some(s), Some(o)) = (&c.subject, v.as_object_mut()) {
        if !s.is_empty() {
            o.insert("label".into(), Value::String(s.clone()));
        }
    }
    v
}

async fn list_credentials(
    api: &Api,
    kind: Kind,
    key: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    let list = api
        .store
        .call(move |c| ccm::list(c, kind, key.as_deref()))
        .await
        .map_err(storage)?;
    Ok(list.iter().map(|c| credential_json(c, kind)).collect())
}

pub(super) async fn list_basic(State(api): State<Api>) -> JsonResult {
    Ok(Json(Value::Array(
        list_credentials(&api, Kind::Basic, None).await?,
    )))
}

pub(super) async fn get_basic(State(api): State<Api>, Path(user): Path<String>) -> JsonResult {
    list_credentials(&api, Kind::Basic, Some(user.clone()))
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no basic credential {user:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewBasic {
    username: String,
    /// Plaintext password (hashed with Argon2 before it is stored) …
    #[serde(default)]
    password: Option<String>,
    /// … or an Argon2 PHC hash made elsewhere (`kp-gateway hash-password`).
    #[serde(default)]
    password_hash: Option<String>,
    /// Applications it may act for (`["*"]`: all); required, so new credentials are bound.
    #[serde(default)]
    applications: Option<Vec<String>>,
    /// Optionally only these endpoint tokens.
    #[serde(default)]
    endpoints: Vec<String>,
}

pub(super) async fn create_basic(
    State(api): State<Api>,
    Json(body): Json<NewBasic>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let scope = ccm::scope::Scope {
        applications: body.applications.ok_or_else(|| {
            ApiError::bad_request(
                "applications is missing: name the applications this credential may act for, or [\"*\"] for all",
            )
        })?,
        endpoints: body.endpoints,
    };
    if let Some(p) = scope.problem() {
        return Err(ApiError::bad_request(p));
    }
    let hash = match (body.password, body.password_hash) {
        (Some(p), None) => tokio::task::spawn_blocking(move || ccm::hash_password(&p))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(storage)?,
        (None, Some(h)) => h,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of password and passwordHash",
            ))
        }
    };
    let user = body.username.clone();
    let created = api
        .store
        .call({
            let scope = scope.clone();
            move |c| ccm::create_basic(c, &user, &hash, &scope)
        })
        .await
        .map_err(storage)?;
    if !created {
        return Err(ApiError::conflict(format!(
            "basic credential {:?} already exists",
            body.username
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"username": body.username, "state": CredState::Inactive,
            "applications": scope.applications, "endpoints": scope.endpoints}),
        ),
    ))
}

/// `PUT …/credentials/basic/{username}/scope`: binds the credential anew; its live
/// sessions end (they reconnect under the new scope).
pub(super) async fn set_basic_scope(
    State(api): State<Api>,
    Path(user): Path<String>,
    Json(scope): Json<ccm::scope::Scope>,
) -> JsonResult {
    if let Some(p) = scope.problem() {
        return Err(ApiError::bad_request(p));
    }
    let (u2, s2) = (user.clone(), scope.clone());
    let found = api
        .store
        .call(move |c| ccm::scope::set_basic(c, &u2, &s2))
        .await
        .map_err(storage)?;
    if !found {
        return Err(ApiError::not_found(format!("no basic credential {user:?}")));
    }
    let cut = api
        .extensions
        .hub
        .cut_identity(&Identity::Basic(user.clone()));
    Ok(Json(
        json!({"username": user, "applications": scope.applications,
        "endpoints": scope.endpoints, "sessionsEnded": cut}),
    ))
}

async fn set_credential_state(api: &Api, kind: Kind, key: String, to: CredState) -> JsonResult {
    let k2 = key.clone();
    let from = api
        .store
        .call(move |c| Ok(ccm::set_state(c, kind, &k2, to)))
        .await
        .map_err(storage)?
        .map_err(|e| state_change(e, "such credential"))?;
    let cut = if to.cuts_sessions() {
        let identity = match kind {
            Kind::Basic => Identity::Basic(key.clone()),
            Kind::X509 => Identity::X509(key.clone()),
        };
        api.extensions.hub.cut_identity(&identity)
    } else {
        0
    };
    Ok(Json(
        json!({"id": key, "state": to, "previousState": from, "sessionsEnded": cut}),
    ))
}

pub(super) async fn set_basic_state(
    State(api): State<Api>,
    Path(user): Path<String>,
    Json(body): Json<StateBody>,
) -> JsonResult {
    set_credential_state(&api, Kind::Basic, user, body.state).await
}

fn fingerprint(s: &str) -> Result<String, ApiError> {
    ccm::normalize_fingerprint(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{s:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        ))
    })
}

pub(super) async fn list_x509(State(api): State<Api>) -> JsonResult {
    Ok(Json(Value::Array(
        list_credentials(&api, Kind::X509, None).await?,
    )))
}

pub(super) async fn get_x509(State(api): State<Api>, Path(fp): Path<String>) -> JsonResult {
    let fp = fingerprint(&fp)?;
    list_credentials(&api, Kind::X509, Some(fp.clone()))
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no X.509 credential {fp}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewX509 {
    /// The client certificate in PEM …
    #[serde(default)]
    certificate: Option<String>,
    /// … or its SHA-256 fingerprint.
    #[serde(default)]
    fingerprint: Option<String>,
    /// Free text to recognise it by (e.g. the device's serial number).
    #[serde(default)]
    label: Option<String>,
}

pub(super) async fn create_x509(
    State(api): State<Api>,
    Json(body): Json<NewX509>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fp = match (body.certificate, body.fingerprint) {
        (Some(pem), None) => {
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                ApiError::bad_request(format!("certificate is not a PEM certificate: {e}"))
            })?;
            ccm::fingerprint_der(der.as_ref())
        }
        (None, Some(f)) => fingerprint(&f)?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of certificate (PEM) and fingerprint",
            ))
        }
    };
    let (fp2, label) = (fp.clone(), body.label.unwrap_or_default());
    let created = api
        .store
        .call(move |c| ccm::create_x509(c, &fp2, &label))
        .await
        .map_err(storage)?;
    if !created {
        return Err(ApiError::conflict(format!(
            "X.509 credential {fp} already exists"
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"fingerprint": fp, "state": CredState::Inactive})),
    ))
}

pub(super) async fn set_x509_state(
    State(api): State<Api>,
    Path(fp): Path<String>,
    Json(body): Json<StateBody>,
) -> JsonResult {
    let fp = fingerprint(&fp)?;
    set_credential_state(&api, Kind::X509, fp, body.state).await
}
