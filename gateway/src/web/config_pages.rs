//! The configuration pages: overview, raw editor, history with diff and rollback, and
//! the one path every save takes ([`commit`]): validate the whole text exactly as
//! `kp-gateway check-config` does, keep it as a version, hand it to the supervisor to
//! apply live. The upstream, bus and device forms are in [`super::edit_forms`].

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use toml_edit::Item;

use super::forms::{self, FieldErrors};
use super::guard::Authed;
use super::pages::{html, page, Chrome};
use super::{ApplyRequest, Web};
use crate::config::Config;
use crate::config_store::{Origin, Version};

pub use super::edit_forms::{
    bus_delete, bus_form, bus_save, device_delete, device_form, device_save, upstream_form,
    upstream_save,
};

/// Sections that only take effect at the next start (everything else applies live).
pub const RESTART_SECTIONS: &[&str] = &["gateway.state_dir", "buffer", "core", "web"];

/// What a save did.
#[derive(Debug)]
pub struct Applied {
    pub version: u64,
    /// Changed sections that wait for a restart.
    pub restart: Vec<&'static str>,
}

fn section<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(v)
}

/// The [`RESTART_SECTIONS`] that differ between two texts.
pub fn restart_needed(old: &str, new: &str) -> Vec<&'static str> {
    let (Ok(a), Ok(b)) = (old.parse::<toml::Table>(), new.parse::<toml::Table>()) else {
        return Vec::new();
    };
    RESTART_SECTIONS
        .iter()
        .copied()
        .filter(|s| section(&a, s) != section(&b, s))
        .collect()
}

/// Validates `text` as a whole, keeps it as a version and applies it live.
/// `Err`: every problem, sorted onto the fields of the form under `prefix`.
pub async fn commit(
    web: &Web,
    who: &Authed,
    text: String,
    origin: Origin,
    note: String,
    prefix: &str,
) -> Result<Applied, FieldErrors> {
    let (_, old_text) = web.running();
    let config = Config::from_toml(&text).map_err(|e| forms::errors_for(&e.0, prefix))?;
    let old_dir = old_text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| section(&t, "gateway.state_dir").cloned());
    let new_dir = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| section(&t, "gateway.state_dir").cloned());
    if old_dir != new_dir {
        return Err(forms::one(
            "",
            "gateway.state_dir cannot be changed from the web page (the history lives there); edit the file and restart",
        ));
    }
    let restart = restart_needed(&old_text, &text);
    let store = web.store.clone();
    let dir = web.state_dir.clone();
    let meta = Version {
        number: 0,
        ts_ms: crate::now_ms(),
        origin,
        who: super::auth::ADMIN.into(),
        from: who.from.to_string(),
        note,
    };
    let saved_text = text.clone();
    let version = tokio::task::spawn_blocking(move || {
        let v = store.save(&saved_text, meta, true)?;
        // The web's version includes the field side in force: a saved remote one would
        // otherwise be laid over it again at the next start.
        crate::remote_config::forget(&dir);
        Ok::<_, crate::config_store::StoreError>(v)
    })
    .await
    .map_err(|e| forms::one("", e.to_string()))?
    .map_err(|e| forms::one("", e.to_string()))?;
    let (done, applied) = tokio::sync::oneshot::channel();
    let sent = web.apply.send(ApplyRequest { config, text, done }).await;
    if sent.is_err() || applied.await.is_err() {
        return Err(forms::one(
            "",
            "saved, but the gateway is stopping: it takes effect at the next start",
        ));
    }
    log::info!(
        "web page: configuration version {} applied ({}; from {})",
        version.number,
        version.note,
        who.from
    );
    Ok(Applied {
        version: version.number,
        restart,
    })
}

/// Where to go after a save: the overview, saying what happened.
pub fn after_save(a: &Applied) -> Response {
    let mut to = format!("/config?saved={}", a.version);
    if !a.restart.is_empty() {
        to.push_str(&format!("&restart={}", a.restart.join(",")));
    }
    Redirect::to(&to).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SavedQuery {
    saved: Option<u64>,
    restart: Option<String>,
}

/// A row of the overview's lists.
#[derive(Debug)]
pub struct Row {
    pub index: usize,
    pub name: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "config.html")]
struct OverviewPage {
    chrome: Chrome,
    saved: Option<u64>,
    restart: String,
    upstream: String,
    buses: Vec<Row>,
    devices: Vec<Row>,
    active: String,
}

/// `GET /config`.
pub async fn overview(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Query(q): Query<SavedQuery>,
) -> Response {
    let (_, text) = web.running();
    let doc = forms::parse(&text).unwrap_or_default();
    let upstream = match doc.get("upstream").and_then(Item::as_table) {
        Some(t) => format!(
            "mqtt{}://{}:{}",
            if t.contains_key("tls") { "s" } else { "" },
            forms::shown(t, "host"),
            t.get("port")
                .and_then(Item::as_integer)
                .unwrap_or(i64::from(crate::upstream::defaults::PORT))
        ),
        None => "the embedded core (standalone site)".into(),
    };
    let buses = forms::tables(&doc, &["modbus", "buses"])
        .iter()
        .enumerate()
        .map(|(index, t)| Row {
            index,
            name: forms::shown(t, "name"),
            detail: format!(
                "{} {}{}",
                forms::shown(t, "kind"),
                forms::shown(t, "port"),
                forms::shown(t, "address")
            ),
        })
        .collect();
    let devices = forms::tables(&doc, &["devices"])
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let kind = ["modbus", "serial_line", "simulated"]
                .into_iter()
                .find(|k| t.contains_key(k))
                .unwrap_or("?");
            let points = t
                .get("points")
                .and_then(Item::as_array_of_tables)
                .map_or(0, |a| a.len());
            Row {
                index,
                name: forms::shown(t, "name"),
                detail: format!(
                    "{kind}, {points} point(s), {}",
                    forms::shown(t, "app_version")
                ),
            }
        })
        .collect();
    let active = match web.store.active() {
        Some((v, _)) => format!(
            "version {} ({}, {})",
            v.number,
            v.origin.as_str(),
            super::pages::when(v.ts_ms)
        ),
        None => "the configuration file".into(),
    };
    html(OverviewPage {
        chrome: Chrome::new(&web, &who, "Configuration", "config"),
        saved: q.saved,
        restart: q.restart.unwrap_or_default(),
        upstream,
        buses,
        devices,
        active,
    })
}

#[derive(Template)]
#[template(path = "raw.html")]
struct RawPage {
    chrome: Chrome,
    text: String,
    errors: Vec<String>,
    mark: &'static str,
}

/// `GET /config/raw`: the whole text, secrets hidden.
pub async fn raw_form(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    let (_, text) = web.running();
    html(RawPage {
        chrome: Chrome::new(&web, &who, "Raw configuration", "config"),
        text: forms::redact(&text),
        errors: Vec::new(),
        mark: forms::SECRET_MARK,
    })
}

page!(OverviewPage, RawPage);

#[derive(Debug, Deserialize)]
pub struct RawForm {
    text: String,
}

/// `POST /config/raw`.
pub async fn raw_save(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Form(f): Form<RawForm>,
) -> Response {
    let (_, old) = web.running();
    let result = match forms::restore_secrets(&f.text, &old) {
        Ok(text) => commit(&web, &who, text, Origin::Web, "raw editor".into(), "").await,
        Err(e) => Err(e),
    };
    match result {
        Ok(a) => after_save(&a),
        Err(errors) => {
            let mut page = RawPage {
                chrome: Chrome::new(&web, &who, "Raw configuration", "config"),
                text: f.text,
                errors: errors.into_values().flatten().collect(),
                mark: forms::SECRET_MARK,
            };
            page.chrome.status = StatusCode::UNPROCESSABLE_ENTITY;
            html(page)
        }
    }
}

/// `GET /config/download`: the text in force, secrets hidden.
pub async fn download(State(web): State<Web>) -> Response {
    let (_, text) = web.running();
    (
        [
            (header::CONTENT_TYPE, "application/toml; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"gateway.toml\"",
            ),
        ],
        forms::redact(&text),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "versions.html")]
struct VersionsPage {
    chrome: Chrome,
    versions: Vec<(Version, String, bool)>,
}

/// `GET /config/versions`.
pub async fn versions(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    let active = web.store.active_number();
    let versions = web
        .store
        .list()
        .into_iter()
        .map(|v| {
            let when = super::pages::when(v.ts_ms);
            let is_active = Some(v.number) == active;
            (v, when, is_active)
        })
        .collect();
    html(VersionsPage {
        chrome: Chrome::new(&web, &who, "Configuration history", "config"),
        versions,
    })
}

page!(VersionsPage);

#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    a: u64,
    b: u64,
}

/// One line of a diff.
#[derive(Debug)]
pub struct DiffLine {
    pub sign: &'static str,
    pub class: &'static str,
    pub text: String,
}

#[derive(Template)]
#[template(path = "diff.html")]
struct DiffPage {
    chrome: Chrome,
    a: u64,
    b: u64,
    lines: Vec<DiffLine>,
}

page!(DiffPage);

/// The line diff of two texts (secrets hidden in both).
pub fn diff_lines(a: &str, b: &str) -> Vec<DiffLine> {
    let (a, b) = (forms::redact(a), forms::redact(b));
    similar::TextDiff::from_lines(&a, &b)
        .iter_all_changes()
        .map(|c| {
            let (sign, class) = match c.tag() {
                similar::ChangeTag::Delete => ("-", "del"),
                similar::ChangeTag::Insert => ("+", "ins"),
                similar::ChangeTag::Equal => (" ", "same"),
            };
            DiffLine {
                sign,
                class,
                text: c.value().trim_end_matches('\n').to_owned(),
            }
        })
        .collect()
}

/// `GET /config/diff?a=N&b=M`.
pub async fn diff(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Query(q): Query<DiffQuery>,
) -> Response {
    let (Some((_, a)), Some((_, b))) = (web.store.get(q.a), web.store.get(q.b)) else {
        return (StatusCode::NOT_FOUND, "no such version").into_response();
    };
    html(DiffPage {
        chrome: Chrome::new(&web, &who, "Differences", "config"),
        a: q.a,
        b: q.b,
        lines: diff_lines(&a, &b),
    })
}

/// `POST /config/rollback/{n}`: version n's text, validated and applied as a new version.
pub async fn rollback(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(number): Path<u64>,
) -> Response {
    let Some((_, text)) = web.store.get(number) else {
        return (StatusCode::NOT_FOUND, "no such version").into_response();
    };
    match commit(
        &web,
        &who,
        text,
        Origin::Rollback,
        format!("rollback to version {number}"),
        "",
    )
    .await
    {
        Ok(a) => after_save(&a),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "version {number} cannot be applied now: {}",
                e.into_values().flatten().collect::<Vec<_>>().join("; ")
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_that_need_a_restart_are_named() {
        let a = "[upstream]\nhost = \"a\"\n[buffer]\nfile = \"b.sqlite\"\n";
        let b = "[upstream]\nhost = \"b\"\n[buffer]\nfile = \"c.sqlite\"\n";
        assert_eq!(restart_needed(a, b), vec!["buffer"]);
        assert!(restart_needed(a, a).is_empty());
    }

    #[test]
    fn diffs_never_show_secrets() {
        let a = "[upstream]\nhost = \"a\"\npassword = \"hunter2-long\"\n";
        let b = "[upstream]\nhost = \"b\"\npassword = \"other-secret\"\n";
        let lines = diff_lines(a, b);
        let all: String = lines.iter().map(|l| l.text.clone()).collect();
        assert!(!all.contains("hunter2") && !all.contains("other-secret"));
        assert!(lines
            .iter()
            .any(|l| l.sign == "+" && l.text.contains("\"b\"")));
    }
}
