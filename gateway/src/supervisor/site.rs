//! The embedded core's side of a site: core-only runs, the gateway's own credential and
//! device registrations in the core, and the periodic status line.

use super::*;

/// Core only: the platform core and nothing of the gateway — no buffer file, no sources.
pub(super) async fn run_core_only(
    config: CoreConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
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

/// Standalone site: a fresh internal credential in the core, and the upstream settings
/// that point at it.
pub(super) async fn internal_upstream(core: &Core) -> anyhow::Result<Upstream> {
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    let hash = tokio::task::spawn_blocking({
        let p = password.clone();
        move || platform_core::ccm::hash_password(&p)
    })
    .await??;
    let cred = platform_core::ccm::BasicCredentialSpec {
        username: INTERNAL_USER.into(),
        password_hash: hash.into(),
        // The gateway itself, for all its devices' applications.
        applications: Some(vec![platform_core::ccm::scope::ALL.into()]),
        endpoints: vec![],
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
pub(super) async fn provision_in_core(core: &Core, config: &Config) -> anyhow::Result<()> {
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
pub(super) async fn status_loop(
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
