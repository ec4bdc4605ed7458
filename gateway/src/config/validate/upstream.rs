//! `[upstream]`: the Kaa server the gateway forwards to.

use crate::upstream::{Tls, Upstream};
use std::path::Path;
use std::time::Duration;

use platform_core::config::Problems;

use crate::config::raw::*;

pub(super) fn upstream(u: RawUpstream, e: &mut Problems) -> Upstream {
    if u.host.trim().is_empty() {
        e.add("upstream.host", "must not be empty");
    }
    if u.port == 0 {
        e.add("upstream.port", "must be 1..=65535");
    }
    if u.client_id.is_empty() || u.client_id.len() > 65535 {
        e.add("upstream.client_id", "must be 1..=65535 bytes");
    }
    if u.password.is_some() && u.username.is_none() {
        e.add(
            "upstream.password",
            "set without upstream.username (MQTT 3.1.1 §3.1.2.9)",
        );
    }
    if !(5..=65535).contains(&u.keepalive_secs) {
        e.add(
            "upstream.keepalive_secs",
            format!("{} is out of range 5..=65535", u.keepalive_secs),
        );
    }
    if u.response_timeout_secs == 0 {
        e.add("upstream.response_timeout_secs", "must be at least 1");
    }
    if !(1..=10_000).contains(&u.batch_max_samples) {
        e.add(
            "upstream.batch_max_samples",
            format!("{} is out of range 1..=10000", u.batch_max_samples),
        );
    }
    if u.reconnect_max_secs == 0 {
        e.add("upstream.reconnect_max_secs", "must be at least 1");
    }
    if !(256..=crate::upstream::MAX_PACKET_SIZE / 2).contains(&u.batch_max_bytes) {
        e.add(
            "upstream.batch_max_bytes",
            format!("{} is out of range 256..=524288", u.batch_max_bytes),
        );
    }
    if !(1..=1000).contains(&u.max_inflight_batches) {
        e.add(
            "upstream.max_inflight_batches",
            format!("{} is out of range 1..=1000", u.max_inflight_batches),
        );
    }
    let tls = u.tls.map(|t| {
        if t.client_cert_file.is_some() != t.client_key_file.is_some() {
            e.add(
                "upstream.tls",
                "client_cert_file and client_key_file go together",
            );
        }
        for (key, file) in [
            ("ca_file", t.ca_file.as_ref()),
            ("client_cert_file", t.client_cert_file.as_ref()),
            ("client_key_file", t.client_key_file.as_ref()),
        ] {
            if let Some(f) = file {
                if !Path::new(f).is_file() {
                    e.add(
                        format!("upstream.tls.{key}"),
                        format!("{f:?} is not a readable file"),
                    );
                }
            }
        }
        Tls {
            ca_file: t.ca_file.map(Into::into),
            client_cert_file: t.client_cert_file.map(Into::into),
            client_key_file: t.client_key_file.map(Into::into),
        }
    });
    Upstream {
        host: u.host,
        port: u.port,
        client_id: u.client_id,
        username: u.username,
        password: u.password,
        keepalive: Duration::from_secs(u.keepalive_secs),
        response_timeout: Duration::from_secs(u.response_timeout_secs),
        batch_max_samples: u.batch_max_samples,
        batch_max_bytes: u.batch_max_bytes,
        max_inflight_batches: u.max_inflight_batches,
        live_window: Duration::from_secs(u.live_window_secs),
        reconnect_max: Duration::from_secs(u.reconnect_max_secs),
        tls,
    }
}
