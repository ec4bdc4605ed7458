//! The commissioning pages: the bus scan (started here, run by the bus's owner task, its
//! progress polled by the page) and the register browser (any range of any table with
//! every interpretation, "make this a point", and a write behind a confirmation step).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::guard::Authed;
use super::pages::{html, page, Chrome};
use super::Web;
use crate::commission::write_codec;
use crate::modbus::interpret::{as_text, interpret, RegisterView};
use crate::modbus::types::RegisterTable;
use crate::source::modbus::tools::{RawValues, ScanProgress, ScanRequest};
use crate::source::modbus::BusHandle;
use crate::source::DeviceSource;

/// The scans started from the page, by bus (the latest per bus is kept to be shown).
#[derive(Debug, Default)]
pub struct Scans(Mutex<HashMap<String, (watch::Receiver<ScanProgress>, CancellationToken)>>);

impl Scans {
    /// The scan of `bus`, named after it even before the bus's task has picked the scan up
    /// (its first progress is empty until then: a page shown in that moment must still
    /// poll the right bus).
    fn progress(&self, bus: &str) -> Option<ScanProgress> {
        let scans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        scans.get(bus).map(|(rx, _)| {
            let mut p = rx.borrow().clone();
            if p.bus.is_empty() {
                p.bus = bus.to_owned();
            }
            p
        })
    }
}

/// The running bus task of `bus`.
fn handle(web: &Web, bus: &str) -> Option<BusHandle> {
    let running = web.running.read().unwrap_or_else(|p| p.into_inner());
    running
        .buses
        .iter()
        .find(|(n, _)| n == bus)
        .map(|(_, h)| h.clone())
}

fn bus_names(web: &Web) -> Vec<String> {
    let running = web.running.read().unwrap_or_else(|p| p.into_inner());
    running.buses.iter().map(|(n, _)| n.clone()).collect()
}

/// Where "make this a point" and "add as device" lead: the configured device at this bus
/// and unit ID, or a new one.
fn device_slot(web: &Web, bus: &str, unit: u8) -> String {
    let running = web.running.read().unwrap_or_else(|p| p.into_inner());
    running
        .config
        .devices
        .iter()
        .position(
            |d| matches!(&d.source, DeviceSource::Modbus(m) if m.bus == bus && m.unit_id == unit),
        )
        .map_or_else(|| "new".to_owned(), |i| i.to_string())
}

fn query_text(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencoding(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes a query value (the characters a bus name or table could hold).
fn urlencoding(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- scan ------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "scan.html")]
struct ScanPage {
    chrome: Chrome,
    buses: Vec<String>,
    bus: String,
    first: u8,
    last: u8,
    timeout_ms: u64,
    progress: Option<ScanProgress>,
    /// Per found unit: the device form it leads to.
    add: Vec<(u8, String, String)>,
    error: String,
}

#[derive(Template)]
#[template(path = "registers.html")]
struct RegistersPage {
    chrome: Chrome,
    buses: Vec<String>,
    q: RegistersQuery,
    views: Vec<RegisterView>,
    /// The whole window read as a string (bytes in address order).
    text: String,
    bits: Vec<(u32, bool)>,
    error: String,
    /// The device form a point goes to (`new` or an index).
    slot: String,
    /// A write waiting for confirmation, or one done.
    pending: Option<WriteForm>,
    written: String,
}

page!(ScanPage, RegistersPage);

#[derive(Debug, Default, serde::Deserialize)]
pub struct BusQuery {
    bus: Option<String>,
}

/// `GET /tools/scan`.
pub async fn scan_page(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Query(q): Query<BusQuery>,
) -> Response {
    let buses = bus_names(&web);
    let bus = q.bus.or_else(|| buses.first().cloned()).unwrap_or_default();
    let progress = web.scans.progress(&bus);
    html(ScanPage {
        chrome: Chrome::new(&web, &who, "Bus scan", "tools"),
        add: found_rows(&web, progress.as_ref()),
        progress,
        buses,
        bus,
        first: 1,
        last: 247,
        timeout_ms: crate::commission::SCAN_ID_TIMEOUT.as_millis() as u64,
        error: String::new(),
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct ScanForm {
    bus: String,
    first: u8,
    last: u8,
    timeout_ms: u64,
}

/// `POST /tools/scan`: starts a scan unless one runs on that bus.
pub async fn scan_start(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Form(f): Form<ScanForm>,
) -> Response {
    let refuse = |error: String| {
        let mut page = ScanPage {
            chrome: Chrome::new(&web, &who, "Bus scan", "tools"),
            buses: bus_names(&web),
            bus: f.bus.clone(),
            first: f.first,
            last: f.last,
            timeout_ms: f.timeout_ms,
            progress: None,
            add: Vec::new(),
            error,
        };
        page.chrome.status = StatusCode::BAD_REQUEST;
        html(page)
    };
    if f.first == 0 || f.last > 247 || f.first > f.last {
        return refuse("unit IDs run from 1 to 247, first ≤ last".into());
    }
    if !(10..=5000).contains(&f.timeout_ms) {
        return refuse("the time-out per ID must be 10–5000 ms".into());
    }
    let Some(h) = handle(&web, &f.bus) else {
        return refuse(format!("no running bus {:?}", f.bus));
    };
    if web
        .scans
        .progress(&f.bus)
        .is_some_and(|p| !p.finished && p.total > 0)
    {
        return refuse("a scan of this bus is running".into());
    }
    let cancel = CancellationToken::new();
    let req = ScanRequest {
        first: f.first,
        last: f.last,
        timeout: Duration::from_millis(f.timeout_ms),
    };
    match h.start_scan(req, cancel.clone()).await {
        Ok(rx) => {
            let mut scans = web.scans.0.lock().unwrap_or_else(|p| p.into_inner());
            scans.insert(f.bus.clone(), (rx, cancel));
        }
        Err(e) => return refuse(e),
    }
    Redirect::to(&format!("/tools/scan?{}", query_text(&[("bus", f.bus)]))).into_response()
}

#[derive(Debug, serde::Deserialize)]
pub struct CancelForm {
    bus: String,
}

/// `POST /tools/scan/cancel`.
pub async fn scan_cancel(State(web): State<Web>, Form(f): Form<CancelForm>) -> Response {
    if let Some((_, c)) = web
        .scans
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&f.bus)
    {
        c.cancel();
    }
    Redirect::to(&format!("/tools/scan?{}", query_text(&[("bus", f.bus)]))).into_response()
}

/// `GET /tools/scan/progress.json?bus=`: the scan's state, with the form links of what
/// it found.
pub async fn scan_progress(State(web): State<Web>, Query(q): Query<BusQuery>) -> Response {
    let bus = q.bus.unwrap_or_default();
    match web.scans.progress(&bus) {
        Some(p) => {
            let add: Vec<String> = p
                .found
                .iter()
                .map(|h| add_device_link(&web, &bus, h.unit))
                .collect();
            Json(serde_json::json!({"progress": p, "add": add})).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no scan of this bus").into_response(),
    }
}

fn found_rows(web: &Web, p: Option<&ScanProgress>) -> Vec<(u8, String, String)> {
    p.map(|p| {
        p.found
            .iter()
            .map(|h| {
                (
                    h.unit,
                    h.answer.clone(),
                    add_device_link(web, &p.bus, h.unit),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The device form pre-filled with the bus and unit ID.
pub fn add_device_link(web: &Web, bus: &str, unit: u8) -> String {
    format!(
        "/config/devices/{}?{}",
        device_slot(web, bus, unit),
        query_text(&[
            ("kind", "modbus".into()),
            ("bus", bus.into()),
            ("unit_id", unit.to_string())
        ])
    )
}

// ---- register browser -------------------------------------------------------------------

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RegistersQuery {
    #[serde(default)]
    bus: String,
    unit: Option<u8>,
    #[serde(default)]
    table: String,
    address: Option<u16>,
    count: Option<u16>,
}

impl RegistersQuery {
    /// The device form with a point at `address` of `ty` in `order`.
    pub fn point_link(&self, slot: &str, address: &u16, ty: &str, order: &str) -> String {
        format!(
            "/config/devices/{slot}?{}",
            query_text(&[
                ("kind", "modbus".into()),
                ("bus", self.bus.clone()),
                ("unit_id", self.unit.unwrap_or(1).to_string()),
                ("point_table", self.table.clone()),
                ("point_address", address.to_string()),
                ("point_type", ty.into()),
                ("point_order", order.into()),
            ])
        )
    }
}

fn registers_page(web: &Web, who: &Authed, q: RegistersQuery) -> RegistersPage {
    let slot = device_slot(web, &q.bus, q.unit.unwrap_or(1));
    RegistersPage {
        chrome: Chrome::new(web, who, "Register browser", "tools"),
        buses: bus_names(web),
        q,
        views: Vec::new(),
        text: String::new(),
        bits: Vec::new(),
        error: String::new(),
        slot,
        pending: None,
        written: String::new(),
    }
}

fn show(page: &mut RegistersPage, start: u16, got: Result<RawValues, String>) {
    match got {
        Ok(RawValues::Words(w)) => {
            page.text = as_text(&w);
            page.views = interpret(start, &w);
        }
        Ok(RawValues::Bits(b)) => {
            page.bits = b
                .into_iter()
                .enumerate()
                .map(|(i, v)| (u32::from(start) + i as u32, v))
                .collect();
        }
        Err(e) => page.error = e,
    }
}

/// `GET /tools/registers`: the form, and with an address the read through the bus task.
pub async fn registers(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Query(mut q): Query<RegistersQuery>,
) -> Response {
    if q.bus.is_empty() {
        q.bus = bus_names(&web).into_iter().next().unwrap_or_default();
    }
    if q.table.is_empty() {
        q.table = "holding".into();
    }
    let mut page = registers_page(&web, &who, q.clone());
    if let Some(address) = q.address {
        let got = match (handle(&web, &q.bus), q.table.parse::<RegisterTable>()) {
            (None, _) => Err(format!("no running bus {:?}", q.bus)),
            (_, Err(e)) => Err(e),
            (Some(h), Ok(table)) => {
                h.read_range(q.unit.unwrap_or(1), table, address, q.count.unwrap_or(10))
                    .await
            }
        };
        show(&mut page, address, got);
    }
    html(page)
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct WriteForm {
    pub bus: String,
    pub unit: u8,
    pub table: String,
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: String,
    pub order: String,
    pub value: String,
    /// Absent: show the confirmation step; `yes`: write.
    #[serde(default)]
    pub confirm: String,
}

/// `POST /tools/registers/write`: first a confirmation page, then the write and its
/// read-back.
pub async fn registers_write(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Form(f): Form<WriteForm>,
) -> Response {
    let q = RegistersQuery {
        bus: f.bus.clone(),
        unit: Some(f.unit),
        table: f.table.clone(),
        address: Some(f.address),
        count: None,
    };
    let mut page = registers_page(&web, &who, q);
    let checked = f
        .table
        .parse::<RegisterTable>()
        .and_then(|t| write_codec(t, &f.data_type, &f.order))
        .and_then(|c| {
            serde_json::from_str::<serde_json::Value>(f.value.trim())
                .map(|v| (c, v))
                .map_err(|_| format!("{:?} is not a number, true or false", f.value))
        });
    let (codec, value) = match checked {
        Ok(cv) => cv,
        Err(e) => {
            page.error = e;
            page.chrome.status = StatusCode::BAD_REQUEST;
            return html(page);
        }
    };
    if f.confirm != "yes" {
        page.pending = Some(f);
        return html(page);
    }
    let Some(h) = handle(&web, &f.bus) else {
        page.error = format!("no running bus {:?}", f.bus);
        return html(page);
    };
    let got = h.write_value(f.unit, codec, f.address, value).await;
    if got.is_ok() {
        page.written = format!(
            "Wrote {} to unit {} {} {}; read back:",
            f.value.trim(),
            f.unit,
            f.table,
            f.address
        );
    }
    show(&mut page, f.address, got);
    html(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_not_yet_picked_up_by_its_bus_is_still_named_after_the_bus() {
        // What `BusHandle::start_scan` returns: the default progress until the bus's task
        // starts the scan (it may be in the middle of a slow poll).
        let (tx, rx) = watch::channel(ScanProgress::default());
        let scans = Scans::default();
        scans
            .0
            .lock()
            .expect("not poisoned")
            .insert("rs485".into(), (rx, CancellationToken::new()));
        let queued = scans.progress("rs485").expect("a scan");
        assert_eq!(queued.bus, "rs485");
        assert!(!queued.finished);
        tx.send_replace(ScanProgress {
            bus: "rs485".into(),
            total: 247,
            ..ScanProgress::default()
        });
        assert_eq!(scans.progress("rs485").expect("a scan").total, 247);
        assert!(scans.progress("other").is_none());
    }
}
