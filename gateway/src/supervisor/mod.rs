//! Starts the gateway's tasks in dependency order and stops them in the reverse order.
//!
//! Start: buffer → core (optional) → one *generation*: the field side (bus tasks, serial
//! sensors, simulated devices, the health report) and the upstream session.
//! A remote configuration (7/CMP) or one saved on the web page ends the generation and
//! starts a new one with the new field side (and, from the web, upstream); the buffer, the
//! core, the web page and everything buffered stay. Every applied configuration is kept in
//! the state directory's history (`config_store`).
//! Stop (SIGTERM/SIGINT or the token): devices first (a sample being taken is made
//! durable before its task ends), then the upstream (DISCONNECT; unconfirmed batches stay
//! buffered), then the core, then the buffer thread. Nothing taken is lost.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use platform_core::epr::EndpointSpec;
use platform_core::secret::Secret;
use platform_core::{Core, CoreConfig};
use rand::distributions::{Alphanumeric, DistString};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::buffer::{BufferHandle, SampleTap};
use crate::config::Config;
use crate::config_store::{ConfigStore, Origin, Version};
use crate::downlink::{CommandTarget, CommandTargets};
use crate::endpoint::Endpoint;
use crate::live::LiveValues;
use crate::remote_config::{self, RemoteConfig, Verdict};
use crate::self_report;
use crate::source::health::{HealthRegistry, HealthState};
use crate::source::DeviceSource;
use crate::source::{self, modbus::BusActor, modbus::BusHandle};
use crate::upstream::{ClientState, ConfigLink, LinkStatus, OwnConfig, Upstream, UpstreamSession};
use crate::web::{self, ApplyRequest, Running, Web};

/// User name of the gateway's own credential in the in-process core (standalone site).
pub const INTERNAL_USER: &str = "kp-gateway-internal";

/// Options that are not part of the validated config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Log a status line (buffer depth, samples stored by the core) this often.
    pub status_every: Option<Duration>,
    /// The configuration text in force (the file's, or the active version of the
    /// history): the base a remote field side is merged into and what the web page edits.
    /// `None`: remote configuration and the web page's editing are off.
    pub config_text: Option<String>,
    /// The configuration file, read again on a reload (SIGHUP) when no version of the
    /// history is active.
    pub config_file: Option<PathBuf>,
    /// Fired on SIGHUP: read the configuration again and apply it if it is valid.
    pub reload: Option<Arc<tokio::sync::Notify>>,
}

/// What stays from one generation to the next.
struct Shared {
    buffer: BufferHandle,
    health: HealthRegistry,
    link: Arc<LinkStatus>,
}

mod clock_watch;
mod generation;
mod site;

use generation::{start_generation, RemoteSetup};
use site::{internal_upstream, provision_in_core, run_core_only, status_loop};

/// Runs until `shutdown` fires (the binary fires it on SIGTERM/SIGINT).
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            config.state_dir.display()
        )
    })?;
    if let Some(core_cfg) = config.core_only() {
        return run_core_only(core_cfg.clone(), shutdown).await;
    }
    let (buffer, buffer_thread) = BufferHandle::open(
        &config.buffer.path,
        config.buffer.synchronous,
        config.buffer.bounds,
    )?;
    // The live values exist for the web page only (no page, no copy of every sample).
    let live = Arc::new(LiveValues::default());
    let buffer = if config.web.is_some() {
        let tap_live = live.clone();
        buffer.with_tap(SampleTap(Arc::new(move |s| tap_live.record(s))))
    } else {
        buffer
    };
    let store = ConfigStore::new(&config.state_dir);
    let mut text = opts.config_text.clone();

    // A remote field side saved by an earlier run wins over the file's, if still valid.
    let mut config = config;
    let mut remote_id = None;
    if let (Some(text), Some(saved)) = (&text, remote_config::load(&config.state_dir)) {
        match remote_config::validate(text, &saved) {
            Ok(c) => {
                log::info!("using the saved remote configuration {:?}", saved.config_id);
                config = with_field_side(&config, c);
                remote_id = Some(saved.config_id);
            }
            Err(e) => log::error!(
                "the saved remote configuration {:?} no longer fits the local file, ignored: {}",
                saved.config_id,
                e.0.join("; ")
            ),
        }
    }

    let core_stop = CancellationToken::new();
    let mut core = None;
    if let Some(core_cfg) = config.core.clone() {
        core = Some(Core::start(core_cfg, core_stop.clone()).await?);
    }
    // Standalone site: the gateway's own credential in the embedded core.
    let internal = match (&config.upstream, &core) {
        (None, Some(core)) => Some(internal_upstream(core).await?),
        _ => None,
    };

    let stats = buffer.stats().await?;
    log::info!(
        "buffer {}: {} samples waiting from an earlier run, {} in the dead-letter table",
        config.buffer.path.display(),
        stats.pending,
        stats.dead_letters
    );
    match &core {
        Some(core) if config.upstream.is_none() => log::info!(
            "standalone site: {} device(s) → in-process core at mqtt://{} (database {})",
            config.devices.len(),
            core.mqtt_addr,
            config
                .core
                .as_ref()
                .map(|c| c.database.display().to_string())
                .unwrap_or_default()
        ),
        _ => log::info!(
            "bridge: {} device(s) → upstream {}",
            config.devices.len(),
            config
                .upstream
                .as_ref()
                .map(|u| format!("mqtt://{}:{}", u.host, u.port))
                .unwrap_or_default()
        ),
    }

    let shared = Shared {
        buffer: buffer.clone(),
        health: HealthRegistry::default(),
        link: Arc::default(),
    };
    let running = Arc::new(RwLock::new(Running {
        config: config.clone(),
        text: text.clone().unwrap_or_default(),
        buses: Vec::new(),
    }));
    let (apply_tx, mut apply_rx) = mpsc::channel::<ApplyRequest>(1);
    let web_stop = CancellationToken::new();
    let web_task = match (&config.web, &text) {
        (Some(settings), Some(_)) => {
            let page = Web {
                settings: settings.clone(),
                state_dir: config.state_dir.clone(),
                buffer: buffer.clone(),
                health: shared.health.clone(),
                link: shared.link.clone(),
                live: live.clone(),
                running: running.clone(),
                store: store.clone(),
                apply: apply_tx.clone(),
                core: core.as_ref().map(|c| web::CoreView {
                    api: platform_core::api::router_for_authenticated_caller(
                        c.extensions.clone(),
                        c.stats.clone(),
                    ),
                    stats: c.stats.clone(),
                    extensions: c.extensions.clone(),
                }),
                auth: Arc::new(web::auth::Auth::new(
                    &config.state_dir,
                    settings.session_idle,
                )),
                started: std::time::Instant::now(),
                depth: Arc::default(),
                scans: Default::default(),
            };
            Some(web::serve(page, web_stop.clone()).await?.1)
        }
        (Some(_), None) => {
            log::warn!("web page: off in the demo without a configuration text");
            None
        }
        _ => None,
    };
    drop(apply_tx);

    let mut announce = remote_id.clone();
    let mut pending_reply: Option<tokio::sync::oneshot::Sender<()>> = None;
    crate::systemd::notify("READY=1");
    let watchdog = tokio::spawn(crate::systemd::watchdog_loop());
    let clock_stop = CancellationToken::new();
    let clock = tokio::spawn(clock_watch::run(buffer.clone(), clock_stop.clone()));
    loop {
        if let (Some(core), None) = (&core, &config.upstream) {
            provision_in_core(core, &config).await?;
        }
        let upstream = match (&config.upstream, &internal) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(i)) => Some(i.clone()),
            (None, None) => {
                log::info!(
                    "first run: no upstream configured yet; samples are kept in the buffer until one is. \
                     Open the web page and claim the gateway with its setup code"
                );
                None
            }
        };
        // Pushed configurations come from the session and are judged here, off the MQTT
        // task (validation and an fsync'ed save); refusals go back to be reported.
        let (pushed_tx, mut pushed_rx) = mpsc::channel::<RemoteConfig>(1);
        let (verdict_tx, verdict_rx) = mpsc::channel::<Verdict>(4);
        let generation = start_generation(
            &config,
            &shared,
            upstream,
            text.as_ref().map(|_| RemoteSetup {
                current_id: remote_id.clone(),
                announce: announce.take(),
                link: ConfigLink {
                    pushed: pushed_tx,
                    verdicts: verdict_rx,
                },
            }),
        );
        {
            let mut r = running.write().unwrap_or_else(|p| p.into_inner());
            r.config = config.clone();
            r.text = text.clone().unwrap_or_default();
            r.buses = generation.buses.clone();
        }
        shared.live_keep(&live, &config);
        if let Some(done) = pending_reply.take() {
            let _ = done.send(());
        }
        let mut status = std::pin::pin!(status_loop(
            &buffer,
            core.as_ref(),
            &shared.health,
            opts.status_every
        ));
        let applied = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                Some(req) = apply_rx.recv() => break Some(Change::Local(req)),
                _ = reloaded(opts.reload.as_deref()) => {
                    let file = opts.config_file.clone();
                    let store = store.clone();
                    let read = tokio::task::spawn_blocking(move || reread(file.as_deref(), &store)).await;
                    match read {
                        Ok(Ok((_, t, what))) if Some(&t) == text.as_ref() => {
                            log::info!("reload: {what} is unchanged; nothing to do");
                        }
                        Ok(Ok((c, t, what))) => break Some(Change::Reload(c, t, what)),
                        Ok(Err(e)) => log::error!(
                            "reload refused, the running configuration stays: {}",
                            e.0.join("; ")
                        ),
                        Err(e) => log::error!("reload failed: {e}"),
                    }
                }
                Some(remote) = pushed_rx.recv() => {
                    let base = text.clone().unwrap_or_default();
                    let dir = config.state_dir.clone();
                    let store = store.clone();
                    let judged = tokio::task::spawn_blocking(move || {
                        let verdict = remote_config::judge(&base, &dir, &remote);
                        let merged = verdict.is_ok().then(|| record_remote(&store, &base, &remote)).flatten();
                        (remote, verdict, merged)
                    })
                    .await;
                    match judged {
                        Ok((remote, Ok(new_config), merged)) => {
                            break Some(Change::Remote(remote, new_config, merged))
                        }
                        Ok((_, Err(verdict), _)) => {
                            let _ = verdict_tx.send(verdict).await;
                        }
                        Err(e) => log::error!("remote configuration check failed: {e}"),
                    }
                }
                _ = &mut status => {}
            }
        };
        match applied {
            None => {
                crate::systemd::notify("STOPPING=1");
                log::info!("shutting down: stopping devices, then the upstream session");
                buffer.stop_blocking();
                generation.stop().await;
                break;
            }
            Some(Change::Remote(remote, new_config, merged)) => {
                log::info!(
                    "applying remote configuration {:?}: restarting the field side",
                    remote.config_id
                );
                generation.stop().await;
                config = with_field_side(&config, new_config);
                if merged.is_some() {
                    text = merged;
                }
                remote_id = Some(remote.config_id.clone());
                announce = Some(remote.config_id);
            }
            Some(Change::Reload(new_config, new_text, what)) => {
                log::info!("reload: applying {what}: restarting the field side");
                crate::systemd::notify("RELOADING=1");
                generation.stop().await;
                config = with_live_changes(&config, new_config);
                log::set_max_level(config.log_level);
                text = Some(new_text);
                remote_id = None;
                remote_config::forget(&config.state_dir);
                crate::systemd::notify("READY=1");
            }
            Some(Change::Local(req)) => {
                log::info!(
                    "applying the configuration saved on the web page: restarting the field side"
                );
                generation.stop().await;
                config = with_live_changes(&config, req.config);
                log::set_max_level(config.log_level);
                text = Some(req.text);
                remote_id = None;
                pending_reply = Some(req.done);
            }
        }
    }
    web_stop.cancel();
    if let Some(task) = web_task {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            log::warn!("web page: open connections did not close within 5 s; stopping anyway");
        }
    }
    if let Some(core) = core {
        core_stop.cancel();
        core.wait().await;
    }
    watchdog.abort();
    clock_stop.cancel();
    let _ = clock.await;
    let stats = buffer.stats().await?;
    drop(shared);
    drop(buffer);
    let _ = tokio::task::spawn_blocking(move || buffer_thread.join()).await;
    log::info!(
        "stopped; {} samples stay buffered for the next start",
        stats.pending
    );
    Ok(())
}

/// What ends a generation.
enum Change {
    /// Pushed over 7/CMP, judged good; with its text for the history when it could be made.
    Remote(RemoteConfig, Config, Option<String>),
    /// Saved on the web page (already validated and kept in the history).
    Local(ApplyRequest),
    /// Read again on SIGHUP: the configuration, its text, and what it is.
    Reload(Config, String, String),
}

/// Waits for a reload request (never, without one).
async fn reloaded(reload: Option<&tokio::sync::Notify>) {
    match reload {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// The configuration to use after a reload (blocking): the active version of the
/// history if one is set, else the file (recorded in the history when it changed).
fn reread(
    file: Option<&Path>,
    store: &ConfigStore,
) -> Result<(Config, String, String), crate::config::ConfigErrors> {
    if let Some((v, text)) = store.active() {
        let c = Config::from_toml(&text)?;
        return Ok((
            c,
            text,
            format!(
                "version {} of the history (the file is not read while a version is active: `kp-gateway config use-file`)",
                v.number
            ),
        ));
    }
    let Some(file) = file else {
        return Err(crate::config::ConfigErrors(vec![
            "no configuration file to read again (the demo)".into(),
        ]));
    };
    let text = crate::config::dropins::read(file)?;
    let c = Config::from_toml(&text).map_err(|e| {
        crate::config::ConfigErrors(
            e.0.into_iter()
                .map(|m| format!("{}: {m}", file.display()))
                .collect(),
        )
    })?;
    if let Err(e) = store.note_file(file, &text) {
        log::warn!("{e}");
    }
    Ok((c, text, file.display().to_string()))
}

/// Keeps a remote configuration's text in the history as the active version (blocking).
fn record_remote(store: &ConfigStore, base: &str, remote: &RemoteConfig) -> Option<String> {
    let Some(text) = remote_config::merged_text(base, remote) else {
        log::warn!(
            "remote configuration {:?} cannot be written as TOML; applied, but not kept in the history",
            remote.config_id
        );
        return None;
    };
    let meta = Version {
        number: 0,
        ts_ms: crate::now_ms(),
        origin: Origin::Remote,
        who: remote.config_id.clone(),
        from: String::new(),
        note: "pushed by the platform (7/CMP)".into(),
    };
    if let Err(e) = store.save(&text, meta, true) {
        log::error!("{e}; the remote configuration is applied but not kept in the history");
    }
    Some(text)
}

/// `current` with everything the web page may change live: the field side, the
/// upstream, the gateway's own endpoint and the log level. Paths, the buffer, the core and
/// the web page itself stay as the process started them (they wait for a restart).
fn with_live_changes(current: &Config, new: Config) -> Config {
    let mut c = current.clone();
    c.buses = new.buses;
    c.devices = new.devices;
    c.upstream = new.upstream;
    c.own_endpoint = new.own_endpoint;
    c.log_level = new.log_level;
    c
}

/// `current` with the field side (buses and devices) of `remote`: everything else —
/// paths, the core, the upstream — stays as the process started it (command-line
/// overrides included).
fn with_field_side(current: &Config, remote: Config) -> Config {
    let mut c = current.clone();
    c.buses = remote.buses;
    c.devices = remote.devices;
    c
}
