//! The REST API's handlers through `router().oneshot()`: every documented route refuses
//! a request without the admin (401, JSON, `WWW-Authenticate`), and typed store errors
//! become the documented statuses (400 invalid, 404 unknown, 409 conflict) as JSON.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine as _;
use platform_core::api::{self, AdminAuth, ApiContext};
use platform_core::{ccm, epr, Core, CoreConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const PASSWORD: &str = "admin-secret";

async fn core(dir: &std::path::Path) -> (Core, CancellationToken) {
    let stop = CancellationToken::new();
    let config = CoreConfig {
        applications: vec![epr::ApplicationSpec {
            name: "plant".into(),
            versions: vec!["plant-v1".into()],
        }],
        endpoints: vec![epr::EndpointSpec {
            id: Some("ep-1".into()),
            token: "tok-1".into(),
            app_version: "plant-v1".into(),
            metadata: Default::default(),
        }],
        ..CoreConfig::new(dir.join("core.sqlite"))
    };
    let core = Core::start(config, stop.clone()).await.expect("core");
    (core, stop)
}

fn router(core: &Core) -> axum::Router {
    api::router(ApiContext {
        extensions: core.extensions.clone(),
        auth: AdminAuth {
            username: "admin".into(),
            password_hash: ccm::hash_password(PASSWORD).expect("hash").into(),
        },
        stats: core.stats.clone(),
        passwords: ccm::password::PasswordChecker::new(2, 64),
    })
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let challenge = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, challenge)
}

/// Every (method, path) the OpenAPI document lists, with its parameters filled in.
fn documented_routes() -> Vec<(Method, String)> {
    let doc = include_str!("../openapi.yaml");
    let mut routes = Vec::new();
    let mut path: Option<String> = None;
    for line in doc.lines() {
        if !line.starts_with(' ') {
            path = None; // a top-level key: the paths section is over
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = Some(format!("/{p}"));
            continue;
        }
        let Some(p) = &path else { continue };
        let m = line.trim_end_matches(':');
        let method = match m {
            "    get" => Method::GET,
            "    post" => Method::POST,
            "    put" => Method::PUT,
            "    patch" => Method::PATCH,
            "    delete" => Method::DELETE,
            _ => continue,
        };
        let filled = p
            .replace("{applicationName}", "plant")
            .replace("{endpointId}", "ep-1")
            .replace("{token}", "tok-1")
            .replace("{username}", "someone")
            .replace("{fingerprint}", &"ab".repeat(32))
            .replace("{commandType}", "reboot")
            .replace("{commandId}", "1")
            .replace("{configName}", "main");
        routes.push((method, filled));
    }
    routes
}

#[tokio::test]
async fn every_documented_route_wants_the_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (core, stop) = core(dir.path()).await;
    let app = router(&core);
    let routes = documented_routes();
    assert!(routes.len() >= 30, "{routes:?}");
    let wrong = basic("admin", "wrong");
    for (method, path) in &routes {
        for auth in [None, Some(wrong.as_str()), Some("Bearer x")] {
            let (status, body, challenge) = call(&app, method.clone(), path, auth, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
            assert!(body["error"].is_string(), "{method} {path}: {body}");
            assert!(challenge.is_some_and(|c| c.starts_with("Basic")));
        }
    }
    stop.cancel();
    core.wait().await;
}

#[tokio::test]
async fn store_errors_become_the_documented_statuses_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (core, stop) = core(dir.path()).await;
    let app = router(&core);
    let admin = basic("admin", PASSWORD);
    let auth = Some(admin.as_str());

    // 409: an endpoint ID or a token that exists already (typed Conflict, not text).
    for body in [
        json!({"appVersion": {"name": "plant-v1"}, "endpointId": "ep-1"}),
        json!({"appVersion": {"name": "plant-v1"}, "token": "tok-1"}),
    ] {
        let body = body.to_string();
        let (status, json, _) =
            call(&app, Method::POST, "/api/v1/endpoints", auth, Some(&body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains("already"),
            "{json}"
        );
    }

    // 400: an invalid name; also a body that is not JSON (axum's rejection, as JSON).
    let (status, json, _) = call(
        &app,
        Method::POST,
        "/api/v1/applications",
        auth,
        Some(r#"{"name": "Not Valid!"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(json["error"].is_string());
    let (status, json, _) = call(
        &app,
        Method::POST,
        "/api/v1/applications",
        auth,
        Some("{nope"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].is_string(), "{json}");

    // 404: an unknown endpoint.
    let (status, json, _) = call(&app, Method::GET, "/api/v1/endpoints/ghost", auth, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json["error"].as_str().unwrap().contains("ghost"), "{json}");

    // 200 with the admin: the provisioned endpoint is there.
    let (status, json, _) = call(&app, Method::GET, "/api/v1/endpoints/ep-1", auth, None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    stop.cancel();
    core.wait().await;
}
