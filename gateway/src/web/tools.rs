//! Diagnostic tools: "test connection" to the upstream (with the form's values, before
//! they are saved) and "read now" on a Modbus device (one poll through its bus task).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};

use super::forms::{self, FieldErrors};
use super::guard::Authed;
use super::pages::{html, page, Chrome};
use super::Web;
use crate::config::Config;
use crate::source::modbus::ReadNow;
use crate::source::DeviceSource;
use crate::upstream::probe::{self, Step};

#[derive(Template)]
#[template(path = "test.html")]
struct TestPage {
    chrome: Chrome,
    steps: Vec<Step>,
    errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "read_now.html")]
struct ReadNowPage {
    chrome: Chrome,
    device: String,
    result: Option<ReadNow>,
    error: String,
}

page!(TestPage, ReadNowPage);

/// `POST /tools/test-upstream`: the upstream form's values (secrets left empty keep the
/// ones in force), checked like a save, then tried step by step. Nothing is saved.
pub async fn test_upstream(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let (_, text) = web.running();
    let mut doc = forms::parse(&text).unwrap_or_default();
    let mut errors = FieldErrors::new();
    super::edit_forms::apply_upstream(&mut doc, &form, &mut errors);
    let upstream = if errors.is_empty() {
        match Config::from_toml(&doc.to_string()) {
            Ok(c) => c.upstream,
            Err(e) => {
                errors.insert(String::new(), e.0);
                None
            }
        }
    } else {
        None
    };
    let steps = match &upstream {
        Some(u) => probe::probe(u).await,
        None => Vec::new(),
    };
    if upstream.is_none() && errors.is_empty() {
        errors.insert(String::new(), vec!["no upstream configured".into()]);
    }
    html(TestPage {
        chrome: Chrome::new(&web, &who, "Test connection", "config"),
        steps,
        errors: errors
            .into_iter()
            .flat_map(|(k, v)| {
                v.into_iter()
                    .map(move |m| if k.is_empty() { m } else { format!("{k}: {m}") })
            })
            .collect(),
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct ReadNowForm {
    device: String,
}

/// `POST /tools/read-now`.
pub async fn read_now(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Form(f): Form<ReadNowForm>,
) -> Response {
    let handle = {
        let running = web.running.read().unwrap_or_else(|p| p.into_inner());
        running
            .config
            .devices
            .iter()
            .find(|d| d.name == f.device)
            .and_then(|d| match &d.source {
                DeviceSource::Modbus(m) => Some(m.bus.clone()),
                _ => None,
            })
            .and_then(|bus| running.buses.iter().find(|(n, _)| *n == bus))
            .map(|(_, h)| h.clone())
    };
    let Some(handle) = handle else {
        return (
            StatusCode::NOT_FOUND,
            "no running Modbus device of that name",
        )
            .into_response();
    };
    let (result, error) = match handle.read_now(&f.device).await {
        Ok(r) => (Some(r), String::new()),
        Err(e) => (None, e),
    };
    html(ReadNowPage {
        chrome: Chrome::new(&web, &who, "Read now", "devices"),
        device: f.device,
        result,
        error,
    })
}
