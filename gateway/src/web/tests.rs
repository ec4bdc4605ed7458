//! The page's router driven with `oneshot`: every route × (no session, session without a
//! CSRF token, valid), the claim, login throttling, headers, and secrets never shown.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;
use crate::buffer::{Bounds, BufferHandle, Synchronous};
use crate::config::Config;

const ADMIN_PASSWORD: &str = "a long admin password";

fn text(dir: &Path) -> String {
    format!(
        r#"[gateway]
state_dir = "{}"

[upstream]
host = "127.0.0.1"
port = 1
password = "upstream-secret-pw"
username = "gw"

[web]
listen = "127.0.0.1:0"

[modbus]
[[modbus.buses]]
name = "tcp1"
kind = "tcp"
address = "127.0.0.1:1"

[[devices]]
name = "boiler"
token = "boiler-secret-token"
app_version = "app-v1"
[devices.modbus]
bus = "tcp1"
[[devices.points]]
name = "t"
address = 0
type = "i16"
"#,
        dir.display()
    )
}

struct Harness {
    web: Web,
    _dir: tempfile::TempDir,
}

/// A page over a real buffer; applied configurations are taken in at once (as the
/// supervisor does, without devices).
async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let t = text(dir.path());
    let config = Config::from_toml(&t).unwrap();
    let (buffer, _thread) = BufferHandle::open(
        &dir.path().join("buffer.sqlite"),
        Synchronous::Normal,
        Bounds::default(),
    )
    .unwrap();
    let running = Arc::new(RwLock::new(Running {
        config: config.clone(),
        text: t,
        buses: Vec::new(),
    }));
    let (apply, mut applied) = mpsc::channel::<ApplyRequest>(1);
    let r = running.clone();
    tokio::spawn(async move {
        while let Some(req) = applied.recv().await {
            let mut run = r.write().unwrap();
            run.config = req.config;
            run.text = req.text;
            let _ = req.done.send(());
        }
    });
    let web = Web {
        settings: config.web.clone().unwrap(),
        state_dir: dir.path().to_owned(),
        buffer,
        health: Default::default(),
        link: Default::default(),
        live: Default::default(),
        running,
        store: crate::config_store::ConfigStore::new(dir.path()),
        apply,
        core: None,
        auth: Arc::new(auth::Auth::new(dir.path(), Duration::from_secs(600))),
        started: Instant::now(),
        depth: Default::default(),
        scans: Default::default(),
    };
    Harness { web, _dir: dir }
}

async fn call(web: &Web, req: Request<Body>) -> Response {
    router(web.clone()).oneshot(req).await.unwrap()
}

async fn body(resp: Response) -> String {
    let b = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, form: &str) -> Request<Body> {
    let mut r =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::from(form.to_owned())).unwrap()
}

/// Claims the gateway and returns (session cookie, CSRF token).
async fn claimed(web: &Web) -> (String, String) {
    let code = web.auth.ensure_setup_code().unwrap().unwrap();
    let form = format!(
        "csrf={pre}&code={code}&password={p}&password2={p}",
        pre = "a".repeat(64),
        p = ADMIN_PASSWORD.replace(' ', "+")
    );
    let resp = call(
        web,
        post(
            "/setup",
            Some(&format!("kpgw_pre={}", "a".repeat(64))),
            &form,
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let id = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("kpgw_session=")
        .to_owned();
    let csrf = web.auth.session(&id).unwrap().csrf;
    (format!("kpgw_session={id}"), csrf)
}

const GETS: &[&str] = &[
    "/",
    "/devices",
    "/buffer",
    "/buffer/pending.csv",
    "/logs",
    "/logs/download",
    "/api/status",
    "/api/devices",
    "/api/history?device=boiler&point=t",
    "/api/logs",
    "/config",
    "/config/upstream",
    "/config/buses/new",
    "/config/buses/0",
    "/config/devices/new",
    "/config/devices/0",
    "/config/raw",
    "/config/download",
    "/config/versions",
];

const POSTS: &[&str] = &[
    "/logout",
    "/buffer/retry",
    "/buffer/purge",
    "/config/upstream",
    "/config/buses/new",
    "/config/buses/0",
    "/config/buses/0/delete",
    "/config/devices/new",
    "/config/devices/0",
    "/config/devices/0/delete",
    "/config/raw",
    "/config/rollback/1",
    "/tools/test-upstream",
    "/tools/read-now",
];

#[tokio::test]
async fn every_route_wants_a_session_and_every_post_a_csrf_token() {
    let h = harness().await;
    let (cookie, csrf) = claimed(&h.web).await;
    for path in GETS {
        let r = call(&h.web, get(path, None)).await;
        if path.starts_with("/api/") {
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "GET {path} without a session"
            );
        } else {
            assert_eq!(
                r.status(),
                StatusCode::SEE_OTHER,
                "GET {path} without a session"
            );
            assert_eq!(r.headers()[header::LOCATION], "/login", "GET {path}");
        }
        let r = call(&h.web, get(path, Some(&cookie))).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path} with a session");
    }
    for path in POSTS {
        let r = call(&h.web, post(path, None, &format!("csrf={csrf}"))).await;
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "POST {path} without a session"
        );
        let r = call(&h.web, post(path, Some(&cookie), "device=boiler")).await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "POST {path} without CSRF"
        );
        let r = call(&h.web, post(path, Some(&cookie), "csrf=wrong")).await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "POST {path} with a wrong CSRF"
        );
    }
    // With the token: handled (what each answers depends on its form, never 401/403).
    for path in POSTS.iter().filter(|p| **p != "/logout") {
        let r = call(&h.web, post(path, Some(&cookie), &format!("csrf={csrf}"))).await;
        assert!(
            !matches!(r.status(), StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED),
            "POST {path} with a valid session and token: {}",
            r.status()
        );
    }
    let r = call(
        &h.web,
        post("/logout", Some(&cookie), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = call(&h.web, get("/", Some(&cookie))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "logged out");
}

#[tokio::test]
async fn the_setup_code_claims_once_and_security_headers_are_everywhere() {
    let h = harness().await;
    let r = call(&h.web, get("/", None)).await;
    assert_eq!(
        r.headers()[header::LOCATION],
        "/setup",
        "unclaimed: setup first"
    );
    let r = call(&h.web, get("/setup", None)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let pre = "b".repeat(64);
    let wrong =
        format!("csrf={pre}&code=AAAA-BBBB-CCCC&password=long+enough+pw&password2=long+enough+pw");
    let r = call(
        &h.web,
        post("/setup", Some(&format!("kpgw_pre={pre}")), &wrong),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The pre-login token must match its cookie.
    let r = call(&h.web, post("/setup", Some("kpgw_pre=other"), &wrong)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    claimed(&h.web).await;
    let r = call(&h.web, get("/setup", None)).await;
    assert_eq!(
        r.headers()[header::LOCATION],
        "/login",
        "the code is used up"
    );
    assert!(!h.web.auth.setup_code_path().exists());
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_address() {
    let h = harness().await;
    claimed(&h.web).await;
    let pre = "c".repeat(64);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = call(
            &h.web,
            post(
                "/login",
                Some(&format!("kpgw_pre={pre}")),
                &format!("csrf={pre}&password=nope+nope"),
            ),
        )
        .await;
        statuses.push(r.status());
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn secrets_never_come_back_and_a_bad_save_changes_nothing() {
    let h = harness().await;
    let (cookie, csrf) = claimed(&h.web).await;
    for path in [
        "/config/raw",
        "/config/download",
        "/config/upstream",
        "/config/devices/0",
    ] {
        let page = body(call(&h.web, get(path, Some(&cookie))).await).await;
        for secret in ["upstream-secret-pw", "boiler-secret-token", ADMIN_PASSWORD] {
            assert!(!page.contains(secret), "{path} shows {secret}");
        }
    }
    // An error lands next to its field; nothing is applied or kept.
    let form = format!("csrf={csrf}&name=boiler&app_version=app-v1&modbus.bus=tcp1&modbus.unit_id=300&points[0].name=t&points[0].address=0&points[0].type=i16");
    let r = call(&h.web, post("/config/devices/0", Some(&cookie), &form)).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = body(r).await;
    assert!(page.contains(r#"data-for="modbus.unit_id""#), "{page}");
    assert!(h.web.store.list().is_empty());
    // Fixed: applied live, kept as version 1, secrets kept although not typed again.
    let form = form.replace("unit_id=300", "unit_id=7");
    let r = call(&h.web, post("/config/devices/0", Some(&cookie), &form)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (config, text) = h.web.running();
    let crate::source::DeviceSource::Modbus(m) = &config.devices[0].source else {
        panic!("not a modbus device");
    };
    assert_eq!(m.unit_id, 7);
    assert!(text.contains("boiler-secret-token") && text.contains("upstream-secret-pw"));
    assert_eq!(h.web.store.active_number(), Some(1));
    // A diff between versions hides secrets too.
    let r = call(
        &h.web,
        post(
            "/config/devices/0/delete",
            Some(&cookie),
            &format!("csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(h.web.running().0.devices.is_empty());
    let page = body(call(&h.web, get("/config/diff?a=1&b=2", Some(&cookie))).await).await;
    assert!(page.contains("boiler") && !page.contains("boiler-secret-token"));
    // Rollback brings the device back as a new version.
    let r = call(
        &h.web,
        post("/config/rollback/1", Some(&cookie), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(h.web.running().0.devices.len(), 1);
    assert_eq!(h.web.store.active_number(), Some(3));
}

#[tokio::test]
async fn metrics_are_open_to_loopback_only_and_healthz_to_all() {
    let h = harness().await;
    let r = call(&h.web, get("/healthz", None)).await;
    assert_eq!(r.status(), StatusCode::OK);
    // No connection info in oneshot: the guard takes it as loopback.
    let r = call(&h.web, get("/metrics", None)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = body(r).await;
    assert!(text.contains("# TYPE kpgw_buffer_pending_samples gauge"));
    assert!(text.contains("kpgw_device_up{device=\"boiler\"} 0"));
    // From the LAN: a credential is needed.
    let mut req = get("/metrics", None);
    req.extensions_mut().insert(axum::extract::ConnectInfo(Peer(
        "192.0.2.7:5000".parse().unwrap(),
    )));
    let r = call(&h.web, req).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_tls_checkbox_turns_tls_on_with_the_system_store_and_off_again() {
    let h = harness().await;
    let (cookie, csrf) = claimed(&h.web).await;
    let form = |tls: &str| {
        format!("csrf={csrf}&host=mqtt.example&port=8883&client_id=kp-gateway&username=gw{tls}")
    };
    let r = call(
        &h.web,
        post("/config/upstream", Some(&cookie), &form("&tls_on=true")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (config, text) = h.web.running();
    let tls = config.upstream.unwrap().tls.expect("TLS on");
    assert_eq!(tls.ca_file, None, "no CA file: the system's trust store");
    assert!(text.contains("[upstream.tls]") && text.contains("upstream-secret-pw"));
    let r = call(&h.web, post("/config/upstream", Some(&cookie), &form(""))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(h.web.running().0.upstream.unwrap().tls.is_none());
    let page = body(
        call(
            &h.web,
            get("/config/upstream?preset=kaa-cloud", Some(&cookie)),
        )
        .await,
    )
    .await;
    assert!(page.contains("mqtt.cloud.kaaiot.com") && page.contains("checked"));
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test]
async fn a_csv_point_map_round_trips_and_bad_rows_are_all_named_with_nothing_applied() {
    let h = harness().await;
    let (cookie, csrf) = claimed(&h.web).await;
    let map = "name,unit,table,address,type,order,scale\n\
               voltage,V,input,0,f32,CDAB,\n\
               current,A,input,6,f32,,\n\
               energy_import,\"kWh, total\",input,72,f32,,\n";
    // Three bad rows — a cell that is no number, a name the configuration refuses, an
    // unknown type: all three reported by row, nothing applied.
    let bad = "name,table,address,type\nok,input,0,u16\nx,input,zz,u16\nbad name,input,2,u16\ny,input,3,u17\n";
    let r = call(
        &h.web,
        post(
            "/config/devices/0/import",
            Some(&cookie),
            &form_encode(&[("csrf", &csrf), ("csv", bad)]),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = body(r).await;
    let rows: Vec<&str> = ["row 3: address", "row 4: name", "row 5: type"]
        .into_iter()
        .filter(|r| page.contains(r))
        .collect();
    assert_eq!(rows.len(), 3, "{page}");
    assert!(!page.contains("row 2"), "{page}");
    assert!(h.web.store.list().is_empty(), "nothing applied");
    // A good map replaces the points; exported again it is the same map.
    let r = call(
        &h.web,
        post(
            "/config/devices/0/import",
            Some(&cookie),
            &form_encode(&[("csrf", &csrf), ("csv", map)]),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let crate::source::DeviceSource::Modbus(m) = &h.web.running().0.devices[0].source else {
        panic!("not a modbus device");
    };
    assert_eq!(m.points.len(), 3);
    let first = body(call(&h.web, get("/config/devices/0/points.csv", Some(&cookie))).await).await;
    assert!(
        first.starts_with("name,unit,table,address,type,"),
        "{first}"
    );
    let r = call(
        &h.web,
        post(
            "/config/devices/0/import",
            Some(&cookie),
            &form_encode(&[("csrf", &csrf), ("csv", &first)]),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let second = body(call(&h.web, get("/config/devices/0/points.csv", Some(&cookie))).await).await;
    assert_eq!(first, second);
    assert!(
        second.contains("energy_import,\"kWh, total\",input,72,f32"),
        "{second}"
    );
}
