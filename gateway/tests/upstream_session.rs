//! The upstream session (rumqttc event loop + pure 1/KP client state) against the
//! project's own Kaa server, platform-core's `Core`, started in-process on a free port:
//! batches acknowledged are deleted, refused ones parked, a restart of the server is
//! survived with nothing lost, a command runs on a real Modbus server and its result
//! comes back, and a pushed configuration reaches the supervisor's side of the link.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::{free_port, modbus_server, wait_for, Registers, RunningCore, APP_VERSION};
use kp_gateway::buffer::{Bounds, BufferHandle, Synchronous};
use kp_gateway::config::Config;
use kp_gateway::downlink::{CommandTarget, CommandTargets};
use kp_gateway::endpoint::Endpoint;
use kp_gateway::remote_config::Verdict;
use kp_gateway::sample::Sample;
use kp_gateway::source::health::HealthRegistry;
use kp_gateway::source::modbus::BusActor;
use kp_gateway::upstream::{ClientState, ConfigLink, OwnConfig, Upstream, UpstreamSession};
use platform_core::ext::{cex, cmx};
use platform_core::kp1::{AppVersionName, EndpointToken};
use platform_core::secret::Secret;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn ep(avn: &str, token: &str) -> Endpoint {
    Endpoint::new(
        AppVersionName::new(avn).unwrap(),
        EndpointToken::new(token).unwrap(),
    )
}

fn upstream(port: u16) -> Upstream {
    Upstream {
        username: Some(common::USER.into()),
        password: Some(Secret::new(common::PASSWORD)),
        reconnect_max: Duration::from_secs(1),
        ..Upstream::new("127.0.0.1", port)
    }
}

fn samples(e: &Endpoint, n: i64) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            Sample::builder(e.clone(), 1_700_000_000_000 + i)
                .value("n", json!(i))
                .build()
        })
        .collect()
}

fn open_buffer(dir: &std::path::Path) -> BufferHandle {
    let (buffer, _thread) = BufferHandle::open(
        &dir.join("buffer.sqlite"),
        Synchronous::Normal,
        Bounds::default(),
    )
    .unwrap();
    buffer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_deleted_when_confirmed_and_parked_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let core = RunningCore::start(dir.path(), "127.0.0.1:0".parse().unwrap(), &["dev1"]).await;
    let buffer = open_buffer(dir.path());
    let (known, unknown) = (ep(APP_VERSION, "dev1"), ep(APP_VERSION, "stranger"));
    buffer.append(samples(&known, 250)).await.unwrap();
    buffer.append(samples(&unknown, 3)).await.unwrap();

    let state = ClientState::new(
        vec![known.clone(), unknown.clone()],
        BTreeMap::new(),
        Duration::from_secs(1),
    );
    let up = upstream(core.core.mqtt_addr.port());
    let session = UpstreamSession::new(up, buffer.clone(), state, HashMap::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(session.run(stop.clone()));

    // 250 samples leave in batches of 100 and are deleted once the core confirms them;
    // the unknown token's batch is refused (401) and parked, not retried forever.
    let stats = wait_for("the buffer to empty", || async {
        let s = buffer.stats().await.ok()?;
        (s.pending == 0 && s.dead_letters == 3).then_some(s)
    })
    .await;
    assert_eq!(stats.leased, 0);
    assert_eq!(core.core.stored_samples().await.unwrap(), 250);
    let dead = kp_gateway::buffer::dead_letter::list(&dir.path().join("buffer.sqlite")).unwrap();
    assert!(
        dead.iter()
            .all(|d| d.token == "stranger" && d.status == 401),
        "{dead:?}"
    );

    stop.cancel();
    task.await.unwrap();
    core.shut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived_and_what_waited_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let core = RunningCore::start(dir.path(), addr, &["dev1"]).await;
    let buffer = open_buffer(dir.path());
    let dev = ep(APP_VERSION, "dev1");
    let state = ClientState::new(vec![dev.clone()], BTreeMap::new(), Duration::from_secs(1));
    let session = UpstreamSession::new(upstream(port), buffer.clone(), state, HashMap::new());
    let connected = session.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(session.run(stop.clone()));

    buffer.append(samples(&dev, 10)).await.unwrap();
    // Stored by the core and confirmed to the session (so none is in flight at the cut).
    wait_for("the first samples stored and confirmed", || async {
        let stored = core.core.stored_samples().await.ok()?;
        let pending = buffer.stats().await.ok()?.pending;
        (stored == 10 && pending == 0).then_some(())
    })
    .await;

    // The server goes away; samples taken meanwhile wait in the buffer.
    core.shut().await;
    wait_for("the session to notice", || async {
        (!connected.is_connected()).then_some(())
    })
    .await;
    buffer.append(samples(&dev, 20)).await.unwrap();
    assert_eq!(buffer.stats().await.unwrap().pending, 20);

    // Back on the same port with the same database: the session reconnects by itself,
    // subscribes again and sends what waited.
    let core = RunningCore::start(dir.path(), addr, &["dev1"]).await;
    wait_for("the waiting samples delivered", || async {
        let s = buffer.stats().await.ok()?;
        (s.pending == 0).then_some(())
    })
    .await;
    assert_eq!(core.core.stored_samples().await.unwrap(), 30);

    stop.cancel();
    task.await.unwrap();
    core.shut().await;
}

/// Waits until command `id` of `ep-valve` has its result.
async fn executed(store: &platform_core::StoreHandle, id: i64) -> cex::Command {
    wait_for("the command's result", || {
        let store = store.clone();
        async move {
            let cmd = store
                .call(move |c| cex::get(c, "ep-valve", id, platform_core::store::now_ms()))
                .await
                .ok()??;
            (cmd.status == cex::CommandStatus::Executed).then_some(cmd)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_from_the_platform_runs_on_the_device_and_its_result_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let regs = Registers::new(&[0, 0]);
    let modbus = modbus_server(regs.clone(), stop.clone()).await;
    let core = RunningCore::start(dir.path(), "127.0.0.1:0".parse().unwrap(), &["valve"]).await;
    let cfg = Config::from_toml(&format!(
        r#"
[gateway]
state_dir = "{}"
[upstream]
host = "127.0.0.1"
[[modbus.buses]]
name = "plant"
kind = "tcp"
address = "{modbus}"
[[devices]]
name = "valve"
token = "valve"
app_version = "{APP_VERSION}"
[devices.modbus]
bus = "plant"
[[devices.points]]
name = "opening"
address = 1
type = "u16"
writable = true
"#,
        dir.path().display()
    ))
    .unwrap();
    let buffer = open_buffer(dir.path());
    let (actor, bus) = BusActor::new(
        cfg.buses[0].clone(),
        &cfg.devices,
        buffer.clone(),
        HealthRegistry::default(),
    );
    tokio::spawn(actor.run(stop.clone()));
    let valve = ep(APP_VERSION, "valve");
    let mut targets = CommandTargets::new();
    targets.insert(
        valve.clone(),
        CommandTarget {
            device: "valve".into(),
            bus,
        },
    );
    let devices = BTreeMap::from([(valve.clone(), "valve".to_owned())]);
    let state = ClientState::new(vec![valve], devices, Duration::from_secs(1));
    let up = upstream(core.core.mqtt_addr.port());
    let session = UpstreamSession::new(up, buffer.clone(), state, targets);
    let connected = session.status();
    tokio::spawn(session.run(stop.clone()));
    common::wait_connected(&connected).await;

    let ext = &core.core.extensions;
    let id = ext
        .send_command(
            "ep-valve",
            "cex",
            "write",
            json!({"point": "opening", "value": 42}),
            60_000,
        )
        .await
        .unwrap();
    let store = core.core.store.clone();
    let done = executed(&store, id).await;
    let result = done.result.expect("a result");
    assert_eq!(result.status_code, 200, "{result:?}");
    assert_eq!(regs.get(1), 42);

    // A command for a point that is not writable comes back refused with 404, not lost.
    let id = ext
        .send_command(
            "ep-valve",
            "cex",
            "write",
            json!({"point": "nope", "value": 1}),
            60_000,
        )
        .await
        .unwrap();
    let done = executed(&store, id).await.result.expect("a result");
    assert_eq!(done.status_code, 404);

    stop.cancel();
    core.shut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_configuration_is_handed_over_and_a_refusal_is_reported_on_applied() {
    let dir = tempfile::tempdir().unwrap();
    let core = RunningCore::start(dir.path(), "127.0.0.1:0".parse().unwrap(), &["gw"]).await;
    let buffer = open_buffer(dir.path());
    let gw = ep("gw-v1", "gw");
    let state = ClientState::new(vec![gw.clone()], BTreeMap::new(), Duration::from_secs(1))
        .with_own_config(OwnConfig {
            endpoint: gw,
            current_id: None,
            announce: None,
        });
    let (pushed_tx, mut pushed) = mpsc::channel(1);
    let (verdict_tx, verdicts) = mpsc::channel(1);
    let session = UpstreamSession::new(
        upstream(core.core.mqtt_addr.port()),
        buffer,
        state,
        HashMap::new(),
    )
    .with_config_link(ConfigLink {
        pushed: pushed_tx,
        verdicts,
    });
    let connected = session.status();
    let stop = CancellationToken::new();
    tokio::spawn(session.run(stop.clone()));
    common::wait_connected(&connected).await;

    let body = json!({"devices": [{"name": "x"}]});
    let (config_id, changed) = core
        .core
        .extensions
        .put_config("ep-gw", "cmx", "", body.clone())
        .await
        .unwrap();
    assert!(changed);
    let got = tokio::time::timeout(Duration::from_secs(60), pushed.recv())
        .await
        .expect("a push in time")
        .expect("the link is open");
    assert_eq!(
        (got.config_id.as_str(), &got.config),
        (config_id.as_str(), &body)
    );

    verdict_tx
        .send(Verdict {
            config_id: config_id.clone(),
            status: 400,
            reason: "devices[0].token: missing".into(),
        })
        .await
        .unwrap();
    let store = core.core.store.clone();
    let applied = wait_for("the /applied report", || {
        let store = store.clone();
        async move {
            store
                .call(|c| cmx::applied(c, "ep-gw", "cmx", ""))
                .await
                .ok()?
        }
    })
    .await;
    assert_eq!(applied.config_id, config_id);
    assert_eq!(applied.status_code, 400);
    assert_eq!(
        applied.reason_phrase.as_deref(),
        Some("devices[0].token: missing")
    );

    stop.cancel();
    core.shut().await;
}
