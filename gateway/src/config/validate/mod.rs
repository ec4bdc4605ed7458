//! Raw → runtime configuration: every check, every error collected with its path.
//!
//! One file per section: `upstream`, `devices` (the device list and resource conflicts),
//! `modbus` (buses and register points), `serial` (serial ports and line sensors);
//! `[core]` is platform-core's own (`platform_core::config::validate`). Cross-section
//! checks — listen-address clashes (the core's and the web page's), the buffer against the disk, the standalone site's
//! app versions — are here.

mod devices;
mod modbus;
mod serial;
mod upstream;
mod web;

use crate::buffer::{Buffer, Synchronous};
use crate::self_report::OwnEndpoint;
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use platform_core::config::{resolve, Problems};
use platform_core::kp1::{AppVersionName, EndpointToken};

use crate::buffer::{Bounds, FullPolicy};
use crate::config::raw::*;
use crate::config::*;
use devices::{check_resources, device};
use modbus::bus;
use upstream::upstream;

/// One bus on its own (see `Config::bus_from_toml`).
pub(super) fn one_bus(raw: RawBus) -> Result<Bus, ConfigErrors> {
    let mut e = Problems::default();
    let b = bus(raw, 0, &mut e);
    e.into_result(b)
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut e = Problems::default();
    let state_dir = PathBuf::from(&raw.gateway.state_dir);
    if raw.gateway.state_dir.is_empty() {
        e.add("gateway.state_dir", "must not be empty");
    }
    let log_level = log::LevelFilter::from_str(&raw.gateway.log_level).unwrap_or_else(|_| {
        e.add(
            "gateway.log_level",
            format!(
                "unknown level {:?} (off, error, warn, info, debug, trace)",
                raw.gateway.log_level
            ),
        );
        log::LevelFilter::Info
    });

    let upstream = raw.upstream.map(|u| upstream(u, &mut e));
    // With the web page, no upstream yet is the first run: configured on the page.
    if upstream.is_none() && raw.core.is_none() && !raw.web.as_ref().is_some_and(|w| w.enabled) {
        e.add(
            "upstream",
            "missing: configure [upstream] (a Kaa server) or [core] (the embedded core), or [web] to do it on the web page",
        );
    }

    let synchronous = match raw.buffer.synchronous.as_str() {
        "full" => Synchronous::Full,
        "normal" => Synchronous::Normal,
        other => {
            e.add(
                "buffer.synchronous",
                format!("unknown value {other:?} (full, normal)"),
            );
            Synchronous::Full
        }
    };
    if raw.buffer.file.is_empty() {
        e.add("buffer.file", "must not be empty");
    }
    let when_full = match raw.buffer.when_full.as_str() {
        "drop_oldest" => FullPolicy::DropOldest,
        "drop_newest" => FullPolicy::DropNewest,
        "block" => FullPolicy::Block,
        other => {
            e.add(
                "buffer.when_full",
                format!("unknown policy {other:?} (drop_oldest, drop_newest, block)"),
            );
            FullPolicy::DropOldest
        }
    };
    if raw.buffer.max_bytes < 64 * 1024 {
        e.add(
            "buffer.max_bytes",
            format!("{} is below the minimum of 65536", raw.buffer.max_bytes),
        );
    }
    if raw.buffer.max_age_secs < 60 {
        e.add(
            "buffer.max_age_secs",
            format!("{} is below the minimum of 60", raw.buffer.max_age_secs),
        );
    }
    let buffer = Buffer {
        path: resolve(&state_dir, &raw.buffer.file),
        synchronous,
        bounds: Bounds {
            max_bytes: raw.buffer.max_bytes,
            max_age: Duration::from_secs(raw.buffer.max_age_secs),
            when_full,
        },
    };
    let own_endpoint = match (&raw.gateway.token, &raw.gateway.app_version) {
        (None, None) => None,
        (Some(t), Some(a)) => {
            let token = EndpointToken::new(t)
                .map_err(|err| e.add("gateway.token", err.to_string()))
                .ok();
            let app_version = AppVersionName::new(a)
                .map_err(|err| e.add("gateway.app_version", err.to_string()))
                .ok();
            if raw.gateway.health_interval_secs == 0 {
                e.add("gateway.health_interval_secs", "must be at least 1");
            }
            token
                .zip(app_version)
                .map(|(token, app_version)| OwnEndpoint {
                    token,
                    app_version,
                    interval: Duration::from_secs(raw.gateway.health_interval_secs.max(1)),
                })
        }
        _ => {
            e.add(
                "gateway",
                "token and app_version go together (the gateway's own endpoint)",
            );
            None
        }
    };

    let core = raw
        .core
        .map(|c| platform_core::config::validate::validate(c, &state_dir, &mut e));

    let web = raw.web.and_then(|w| web::web(w, &mut e));
    if let (Some(w), Some(core)) = (&web, &core) {
        for core_listener in core.listeners() {
            let pair = [core_listener, ("web.listen", w.listen)];
            platform_core::config::check_listen_clashes(&pair, &mut e);
        }
    }

    let mut buses = Vec::new();
    let mut bus_gaps: Vec<(String, u16)> = Vec::new();
    let mut bus_names = HashSet::new();
    for (i, b) in raw.modbus.buses.into_iter().enumerate() {
        if !bus_names.insert(b.name.clone()) {
            e.add(
                format!("modbus.buses[{i}].name"),
                format!("duplicate bus name {:?}", b.name),
            );
        }
        let gap = b.max_gap;
        let bus = bus(b, i, &mut e);
        bus_gaps.push((bus.name.clone(), gap));
        buses.push(bus);
    }
    check_resources(&buses, &raw.devices, &mut e);

    let mut devices = Vec::new();
    let mut names = HashSet::new();
    let mut tokens = HashSet::new();
    for (i, d) in raw.devices.into_iter().enumerate() {
        let path = format!("devices[{i}]");
        if !names.insert(d.name.clone()) {
            e.add(
                format!("{path}.name"),
                format!("duplicate device name {:?}", d.name),
            );
        }
        if !tokens.insert((d.app_version.clone(), d.token.expose().to_owned())) {
            e.add(
                format!("{path}.token"),
                "another device already uses this token in this app version",
            );
        }
        if let Some(dev) = device(d, &bus_gaps, &path, &mut e) {
            devices.push(dev);
        }
    }

    // Standalone site: the devices' app versions must exist in the embedded core.
    if let (None, Some(core)) = (&upstream, &core) {
        let known: BTreeSet<&str> = core
            .applications
            .iter()
            .flat_map(|a| a.versions.iter().map(String::as_str))
            .collect();
        if let Some(own) = &own_endpoint {
            if !known.contains(own.app_version.as_str()) {
                e.add(
                    "gateway.app_version",
                    format!(
                        "{:?} is not a version of any [[core.applications]]",
                        own.app_version.as_str()
                    ),
                );
            }
        }
        for (i, d) in devices.iter().enumerate() {
            if !known.contains(d.app_version.as_str()) {
                e.add(
                    format!("devices[{i}].app_version"),
                    format!(
                        "{:?} is not a version of any [[core.applications]] (the embedded core is the upstream)",
                        d.app_version.as_str()
                    ),
                );
            }
        }
    }

    e.into_result(Config {
        profiles_dir: PathBuf::from(&raw.gateway.profiles_dir),
        state_dir,
        log_level,
        upstream,
        buffer,
        own_endpoint,
        core,
        buses,
        devices,
        web,
    })
}
