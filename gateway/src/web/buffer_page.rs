//! The buffer page: depth, drops by device and reason, dead letters (retry, purge), and
//! the export of every waiting sample as CSV (streamed page by page, never all in memory).
//! Devices are named, never shown by token (a token is a secret).

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};

use super::guard::Authed;
use super::pages::{html, page, when, Chrome};
use super::Web;
use crate::buffer::dead_letter;
use crate::source::endpoint_of;

/// (app version, token) → device name, for everything configured now.
fn device_names(web: &Web) -> BTreeMap<(String, String), String> {
    let (config, _) = web.running();
    let mut names: BTreeMap<(String, String), String> = config
        .devices
        .iter()
        .map(|d| {
            let ep = endpoint_of(d);
            (
                (
                    ep.app_version.as_str().to_owned(),
                    ep.token.as_str().to_owned(),
                ),
                d.name.clone(),
            )
        })
        .collect();
    if let Some(own) = &config.own_endpoint {
        names.insert(
            (
                own.app_version.as_str().to_owned(),
                own.token.as_str().to_owned(),
            ),
            "(the gateway itself)".into(),
        );
    }
    names
}

fn name_of(names: &BTreeMap<(String, String), String>, avn: &str, token: &str) -> String {
    names
        .get(&(avn.to_owned(), token.to_owned()))
        .cloned()
        .unwrap_or_else(|| format!("(a device no longer configured, {avn})"))
}

/// One dead letter as shown.
#[derive(Debug)]
pub struct DeadRow {
    pub seq: i64,
    pub device: String,
    pub time: String,
    pub status: u16,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "buffer.html")]
struct BufferPage {
    chrome: Chrome,
    pending: u64,
    bytes: u64,
    in_flight: u64,
    drops: Vec<(String, String, u64)>,
    dead: Vec<DeadRow>,
    error: String,
}

page!(BufferPage);

/// `GET /buffer`.
pub async fn buffer_page(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    let stats = web.buffer.stats().await.unwrap_or_default();
    let names = device_names(&web);
    let drops = stats
        .drops
        .iter()
        .flat_map(|((avn, token), per)| {
            let device = name_of(&names, avn, token);
            per.iter()
                .map(move |(reason, n)| (device.clone(), reason.clone(), *n))
        })
        .collect();
    let path = web.running().0.buffer.path;
    let listed = tokio::task::spawn_blocking(move || dead_letter::list(&path)).await;
    let (dead, error) = match listed {
        Ok(Ok(rows)) => (
            rows.into_iter()
                .map(|d| DeadRow {
                    seq: d.seq,
                    device: name_of(&names, &d.app_version, &d.token),
                    time: when(d.ts_ms),
                    status: d.status,
                    reason: d.reason,
                })
                .collect(),
            String::new(),
        ),
        Ok(Err(e)) => (Vec::new(), format!("cannot read the dead letters: {e}")),
        Err(e) => (Vec::new(), format!("cannot read the dead letters: {e}")),
    };
    html(BufferPage {
        chrome: Chrome::new(&web, &who, "Buffer", "buffer"),
        pending: stats.pending,
        bytes: stats.bytes,
        in_flight: stats.leased,
        drops,
        dead,
        error,
    })
}

/// The dead letters a form selected (`seq` fields; none: all).
fn selected(form: &[(String, String)]) -> Vec<i64> {
    form.iter()
        .filter(|(k, _)| k == "seq")
        .filter_map(|(_, v)| v.parse().ok())
        .collect()
}

async fn dead_letter_action(
    web: &Web,
    form: Vec<(String, String)>,
    what: &'static str,
    run: fn(&std::path::Path, &[i64]) -> Result<usize, crate::buffer::BufferError>,
) -> Response {
    let seqs = selected(&form);
    let path = web.running().0.buffer.path;
    match tokio::task::spawn_blocking(move || run(&path, &seqs)).await {
        Ok(Ok(n)) => {
            log::info!("web page: {n} dead letter(s) {what}");
            web.buffer.new_data.notify_one();
            Redirect::to("/buffer").into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `POST /buffer/retry`: back into the queue (selected, or all).
pub async fn dead_letters_retry(
    State(web): State<Web>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    dead_letter_action(&web, form, "moved back to the queue", dead_letter::retry).await
}

/// `POST /buffer/purge`: deleted for good (selected, or all).
pub async fn dead_letters_purge(
    State(web): State<Web>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    dead_letter_action(&web, form, "purged", dead_letter::purge).await
}

/// A CSV field, quoted when it must be.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `GET /buffer/pending.csv`: every waiting sample (seq, device, app version, time, JSON).
pub async fn export_pending(State(web): State<Web>) -> Response {
    let names = device_names(&web);
    let path = web.running().0.buffer.path;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let _ = tx.try_send(Ok("seq,device,app_version,time,sample\n".into()));
    tokio::task::spawn_blocking(move || {
        let r = dead_letter::each_pending(&path, 1000, |rows| {
            let mut chunk = String::new();
            for p in rows {
                chunk.push_str(&format!(
                    "{},{},{},{},{}\n",
                    p.seq,
                    csv(&name_of(&names, &p.app_version, &p.token)),
                    csv(&p.app_version),
                    when(p.ts_ms),
                    csv(&p.payload)
                ));
            }
            tx.blocking_send(Ok(chunk)).is_ok()
        });
        if let Err(e) = r {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"pending-samples.csv\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv(r#"{"a":1,"b":"x"}"#), r#""{""a"":1,""b"":""x""}""#);
    }
}
