//! Starts the gateway's tasks in dependency order and stops them in the reverse order.
//!
//! Start: buffer → core (optional) → one *generation*: the field side (bus tasks, serial
//! sensors, simulated devices, the health report) and the upstream session.
//! A remote configuration (7/CMP) ends the generation and starts a new one with the new
//! field side; the buffer, the core and everything buffered stay.
//! Stop (SIGTERM/SIGINT or the token): devices first (a sample being taken is made
//! durable before its task ends), then the upstream (DISCONNECT; unconfirmed batches stay
//! buffered), then the core, then the buffer thread. Nothing taken is lost.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;
use platform_core::epr::EndpointSpec;
use platform_core::secret::Secret;
use platform_core::{Core, CoreConfig};
use rand::distributions::{Alphanumeric, DistString};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::buffer::BufferHandle;
use crate::config::Config;
use crate::downlink::{CommandTarget, CommandTargets};
use crate::endpoint::Endpoint;
use crate::remote_config::{self, RemoteConfig, Verdict};
use crate::self_report;
use crate::source::health::{HealthRegistry, HealthState};
use crate::source::DeviceSource;
use crate::source::{self, modbus::BusActor, modbus::BusHandle};
use crate::upstream::{ClientState, ConfigLink, OwnConfig, Upstream, UpstreamSession};

/// User name of the gateway's own credential in the in-process core (standalone site).
pub const INTERNAL_USER: &str = "kp-gateway-internal";

/// Options that are not part of the validated config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Log a status line (buffer depth, samples stored by the core) this often.
    pub status_every: Option<Duration>,
    /// The configuration file's text: the base a remote field side is merged into.
    /// `None`: remote configuration is off.
    pub config_text: Option<String>,
}

/// What a generation's session needs for remote configuration.
struct RemoteSetup {
    current_id: Option<String>,
    announce: Option<String>,
    link: ConfigLink,
}

/// The running field side and upstream session of one configuration.
struct Generation {
    sources: JoinSet<()>,
    sources_stop: CancellationToken,
    upstream: JoinHandle<()>,
    upstream_stop: CancellationToken,
}

impl Generation {
    /// Stops devices first (their samples are made durable), then the upstream session.
    async fn stop(mut self) {
        self.sources_stop.cancel();
        while self.sources.join_next().await.is_some() {}
        self.upstream_stop.cancel();
        let _ = self.upstream.await;
    }
}

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

    // A remote field side saved by an earlier run wins over the file's, if still valid.
    let mut config = config;
    let mut remote_id = None;
    if let (Some(text), Some(saved)) = (&opts.config_text, remote_config::load(&config.state_dir)) {
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
    // The upstream connection settings never change at run time.
    let upstream = match (&config.upstream, &core) {
        (Some(u), _) => u.clone(),
        (None, Some(core)) => internal_upstream(core).await?,
        (None, None) => anyhow::bail!("no upstream and no core configured"),
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
            "bridge: {} device(s) → upstream mqtt://{}:{}",
            config.devices.len(),
            upstream.host,
            upstream.port
        ),
    }

    let health = HealthRegistry::default();
    let mut announce = remote_id.clone();
    crate::systemd::notify("READY=1");
    let watchdog = tokio::spawn(crate::systemd::watchdog_loop());
    loop {
        if let (Some(core), None) = (&core, &config.upstream) {
            provision_in_core(core, &config).await?;
        }
        // Pushed configurations come from the session and are judged here, off the MQTT
        // task (validation and an fsync'ed save); refusals go back to be reported.
        let (pushed_tx, mut pushed_rx) = mpsc::channel::<RemoteConfig>(1);
        let (verdict_tx, verdict_rx) = mpsc::channel::<Verdict>(4);
        let generation = start_generation(
            &config,
            &buffer,
            &health,
            upstream.clone(),
            opts.config_text.as_ref().map(|_| RemoteSetup {
                current_id: remote_id.clone(),
                announce: announce.take(),
                link: ConfigLink {
                    pushed: pushed_tx,
                    verdicts: verdict_rx,
                },
            }),
        );
        let mut status = std::pin::pin!(status_loop(
            &buffer,
            core.as_ref(),
            &health,
            opts.status_every
        ));
        let applied = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                Some(remote) = pushed_rx.recv() => {
                    let base = opts.config_text.clone().unwrap_or_default();
                    let dir = config.state_dir.clone();
                    let judged = tokio::task::spawn_blocking(move || {
                        let verdict = remote_config::judge(&base, &dir, &remote);
                        (remote, verdict)
                    })
                    .await;
                    match judged {
                        Ok((remote, Ok(new_config))) => break Some((remote, new_config)),
                        Ok((_, Err(verdict))) => {
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
            Some((remote, new_config)) => {
                log::info!(
                    "applying remote configuration {:?}: restarting the field side",
                    remote.config_id
                );
                generation.stop().await;
                config = with_field_side(&config, new_config);
                remote_id = Some(remote.config_id.clone());
                announce = Some(remote.config_id);
            }
        }
    }
    if let Some(core) = core {
        core_stop.cancel();
        core.wait().await;
    }
    watchdog.abort();
    let stats = buffer.stats().await?;
    drop(buffer);
    let _ = tokio::task::spawn_blocking(move || buffer_thread.join()).await;
    log::info!(
        "stopped; {} samples stay buffered for the next start",
        stats.pending
    );
    Ok(())
}

/// Core only: the platform core and nothing of the gateway — no buffer file, no sources.
async fn run_core_only(config: CoreConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let core_stop = CancellationToken::new();
    let core = Core::start(config, core_stop.clone()).await?;
    log::info!("core only: platform core at mqtt://{}", core.mqtt_addr);
    crate::systemd::notify("READY=1");
    let watchdog = tokio::spawn(crate::systemd::watchdog_loop());
    shutdown.cancelled().await;
    crate::systemd::notify("STOPPING=1");
    log::info!("shutting down the platform core");
    core_stop.cancel();
    core.wait().await;
    watchdog.abort();
    log::info!("stopped");
    Ok(())
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

/// Starts the field side and the upstream session for `config`.
fn start_generation(
    config: &Config,
    buffer: &BufferHandle,
    health: &HealthRegistry,
    upstream: Upstream,
    remote: Option<RemoteSetup>,
) -> Generation {
    let sources_stop = CancellationToken::new();
    let upstream_stop = CancellationToken::new();
    let mut sources = JoinSet::new();
    let mut bus_handles = Vec::new();
    for bus in config.buses.clone() {
        let name = bus.name.clone();
        let (actor, handle) = BusActor::new(bus, &config.devices, buffer.clone(), health.clone());
        bus_handles.push((name, handle));
        sources.spawn(actor.run(sources_stop.clone()));
    }
    for d in config.devices.clone() {
        log::info!(
            "device {}: → kp1/{}/dcx/<token>/json",
            d.name,
            d.app_version.as_str()
        );
        match &d.source {
            DeviceSource::Simulated(_) => {
                sources.spawn(source::run_simulated(
                    d,
                    buffer.clone(),
                    sources_stop.clone(),
                ));
            }
            DeviceSource::SerialLine(_) => {
                sources.spawn(source::serial_line::run(
                    d,
                    buffer.clone(),
                    health.clone(),
                    sources_stop.clone(),
                ));
            }
            DeviceSource::Modbus(_) => {} // polled by its bus task
        }
    }
    let mut endpoints: Vec<Endpoint> = config.devices.iter().map(source::endpoint_of).collect();
    let own = config
        .own_endpoint
        .as_ref()
        .map(|own| Endpoint::new(own.app_version.clone(), own.token.clone()));
    endpoints.extend(own.clone());
    let targets = command_targets(config, &bus_handles);
    let metadata = config
        .devices
        .iter()
        .map(|d| (source::endpoint_of(d), d.metadata.clone()))
        .collect();
    let devices = targets
        .iter()
        .map(|(ep, t)| (ep.clone(), t.device.clone()))
        .collect();
    let mut state =
        ClientState::new(endpoints, devices, upstream.reconnect_max).with_metadata(metadata);
    let mut link = None;
    if let (Some(endpoint), Some(r)) = (own, remote) {
        state = state.with_own_config(OwnConfig {
            endpoint,
            current_id: r.current_id,
            announce: r.announce,
        });
        link = Some(r.link);
    }
    let mut session = UpstreamSession::new(upstream, buffer.clone(), state, targets);
    if let Some(link) = link {
        session = session.with_config_link(link);
    }
    if let Some(own) = config.own_endpoint.clone() {
        let connected = session.connected_flag();
        sources.spawn(self_report::run(
            own,
            buffer.clone(),
            health.clone(),
            connected,
            sources_stop.clone(),
        ));
    }
    let upstream = tokio::spawn(session.run(upstream_stop.clone()));
    Generation {
        sources,
        sources_stop,
        upstream,
        upstream_stop,
    }
}

/// Device endpoints with writable points, and the bus that writes them.
fn command_targets(config: &Config, buses: &[(String, BusHandle)]) -> CommandTargets {
    config
        .devices
        .iter()
        .filter_map(|d| match &d.source {
            DeviceSource::Modbus(m) if m.points.iter().any(|p| p.writable) => {
                let bus = buses.iter().find(|(n, _)| *n == m.bus)?.1.clone();
                Some((
                    source::endpoint_of(d),
                    CommandTarget {
                        device: d.name.clone(),
                        bus,
                    },
                ))
            }
            _ => None,
        })
        .collect()
}

/// Standalone site: a fresh internal credential in the core, and the upstream settings
/// that point at it.
async fn internal_upstream(core: &Core) -> anyhow::Result<Upstream> {
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    let hash = tokio::task::spawn_blocking({
        let p = password.clone();
        move || platform_core::ccm::hash_password(&p)
    })
    .await??;
    let cred = platform_core::ccm::BasicCredentialSpec {
        username: INTERNAL_USER.into(),
        password_hash: hash.into(),
    };
    core.provision(vec![], vec![], vec![cred])
        .await
        .context("cannot register the gateway's credential in the embedded core")?;
    let addr = core.mqtt_addr;
    let host = if addr.ip().is_unspecified() {
        Ipv4Addr::LOCALHOST.to_string()
    } else {
        addr.ip().to_string()
    };
    Ok(Upstream {
        username: Some(INTERNAL_USER.into()),
        password: Some(Secret::new(password)),
        ..Upstream::new(host, addr.port())
    })
}

/// Standalone site: registers the devices (and the gateway's own endpoint) in the core.
async fn provision_in_core(core: &Core, config: &Config) -> anyhow::Result<()> {
    let mut endpoints: Vec<EndpointSpec> = config
        .devices
        .iter()
        .map(|d| EndpointSpec {
            id: None,
            token: d.token.as_str().into(),
            app_version: d.app_version.as_str().to_owned(),
            metadata: d.metadata.clone(),
        })
        .collect();
    if let Some(own) = &config.own_endpoint {
        endpoints.push(EndpointSpec {
            id: None,
            token: own.token.as_str().into(),
            app_version: own.app_version.as_str().to_owned(),
            metadata: serde_json::Map::new(),
        });
    }
    core.provision(vec![], endpoints, vec![])
        .await
        .context("cannot register the devices in the embedded core")
}

/// Logs buffer depth (and the core's stored sample count) every `every`; never returns
/// when `every` is `None`.
async fn status_loop(
    buffer: &BufferHandle,
    core: Option<&Core>,
    health: &HealthRegistry,
    every: Option<Duration>,
) {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let b = buffer.stats().await.unwrap_or_default();
        let stored = match core {
            Some(c) => c
                .stored_samples()
                .await
                .map(|n| format!("; core has stored {n} samples"))
                .unwrap_or_default(),
            None => String::new(),
        };
        log::info!(
            "status: buffer {} pending ({} bytes), {} in flight, {} dropped, {} dead letters{stored}",
            b.pending,
            b.bytes,
            b.leased,
            b.dropped_total(),
            b.dead_letters
        );
        for (name, h) in health.snapshot() {
            if h.state != HealthState::Ok || h.bad_lines > 0 {
                log::info!(
                    "status: device {name} {} ({} polls, {} failures, {} exceptions, {} bad lines; last error: {})",
                    h.state.as_str(),
                    h.polls,
                    h.failures,
                    h.exceptions,
                    h.bad_lines,
                    h.last_error.as_deref().unwrap_or("none")
                );
            }
        }
    }
}
