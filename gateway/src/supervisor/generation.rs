//! One generation: the field side (bus tasks, serial sensors, simulated devices, the
//! health report) and the upstream session of one configuration, started together and
//! stopped devices first.

use super::*;

/// What a generation's session needs for remote configuration.
pub(super) struct RemoteSetup {
    pub(super) current_id: Option<String>,
    pub(super) announce: Option<String>,
    pub(super) link: ConfigLink,
}

/// The running field side and upstream session of one configuration.
pub(super) struct Generation {
    /// The bus tasks ("read now" on the web page goes through them).
    pub(super) buses: Vec<(String, BusHandle)>,
    sources: JoinSet<()>,
    sources_stop: CancellationToken,
    upstream: JoinHandle<()>,
    upstream_stop: CancellationToken,
}

impl Generation {
    /// Stops devices first (their samples are made durable), then the upstream session.
    pub(super) async fn stop(mut self) {
        self.sources_stop.cancel();
        while self.sources.join_next().await.is_some() {}
        self.upstream_stop.cancel();
        let _ = self.upstream.await;
    }
}

impl Shared {
    /// The live values of devices no longer configured are forgotten.
    pub(super) fn live_keep(&self, live: &LiveValues, config: &Config) {
        let mut keep: Vec<Endpoint> = config.devices.iter().map(source::endpoint_of).collect();
        if let Some(own) = &config.own_endpoint {
            keep.push(Endpoint::new(own.app_version.clone(), own.token.clone()));
        }
        live.retain(&keep);
    }
}

/// Starts the field side and the upstream session for `config`.
pub(super) fn start_generation(
    config: &Config,
    shared: &Shared,
    upstream: Option<Upstream>,
    remote: Option<RemoteSetup>,
) -> Generation {
    let (buffer, health) = (&shared.buffer, &shared.health);
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
                    health.clone(),
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
    let reconnect_max = upstream
        .as_ref()
        .map_or(crate::upstream::defaults::RECONNECT_MAX, |u| {
            u.reconnect_max
        });
    let mut state = ClientState::new(endpoints, devices, reconnect_max)
        .with_metadata(metadata)
        .with_first_id(random_request_id());
    let mut link = None;
    if let (Some(endpoint), Some(r)) = (own, remote) {
        state = state.with_own_config(OwnConfig {
            endpoint,
            current_id: r.current_id,
            announce: r.announce,
        });
        link = Some(r.link);
    }
    if let Some(own) = config.own_endpoint.clone() {
        sources.spawn(self_report::run(
            own,
            buffer.clone(),
            health.clone(),
            shared.link.clone(),
            sources_stop.clone(),
        ));
    }
    let upstream = match upstream {
        Some(upstream) => {
            let mut session = UpstreamSession::new(upstream, buffer.clone(), state, targets)
                .with_status(shared.link.clone());
            if let Some(link) = link {
                session = session.with_config_link(link);
            }
            tokio::spawn(session.run(upstream_stop.clone()))
        }
        // Not configured yet (first run): samples wait in the buffer for an upstream.
        None => {
            shared.link.starting("(not configured yet)".into());
            let stop = upstream_stop.clone();
            tokio::spawn(async move { stop.cancelled().await })
        }
    };
    Generation {
        buses: bus_handles.clone(),
        sources,
        sources_stop,
        upstream,
        upstream_stop,
    }
}

/// Device endpoints with writable points, and the bus that writes them.
pub(super) fn command_targets(config: &Config, buses: &[(String, BusHandle)]) -> CommandTargets {
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

/// A random first request ID for a new session (see `ClientState::with_first_id`).
fn random_request_id() -> platform_core::kp1::RequestId {
    use rand::Rng;
    let id = rand::thread_rng().gen_range(1..=platform_core::kp1::MAX_REQUEST_ID);
    platform_core::kp1::RequestId::new(id).unwrap_or(platform_core::kp1::RequestId::FIRST)
}
