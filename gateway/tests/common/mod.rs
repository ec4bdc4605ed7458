//! Shared pieces of the gateway's integration tests: an in-process platform core on a
//! free port, a Modbus TCP server (tokio-modbus) with a register image, and a poll helper
//! that waits for a condition with a generous deadline (never a fixed sleep).

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform_core::{ccm, epr, Core, CoreConfig};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

pub const USER: &str = "gw";
pub const PASSWORD: &str = "gw-password";
pub const APP_VERSION: &str = "plant-v1";

/// Waits until `check` returns `Some`, polling every 20 ms, for at most 60 s.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until an upstream session's connected flag is up.
pub async fn wait_connected(link: &kp_gateway::upstream::LinkStatus) {
    wait_for("the upstream session to connect", || async {
        link.is_connected().then_some(())
    })
    .await;
}

/// The core's configuration: one application, the given endpoints (id = "ep-<token>"),
/// the gateway's credential, MQTT on `listen`.
pub fn core_config(dir: &std::path::Path, listen: SocketAddr, tokens: &[&str]) -> CoreConfig {
    let hash = ccm::hash_password(PASSWORD).expect("hash");
    let mut config = CoreConfig {
        applications: vec![epr::ApplicationSpec {
            name: "plant".into(),
            versions: vec![APP_VERSION.into(), "gw-v1".into()],
        }],
        endpoints: tokens
            .iter()
            .map(|t| epr::EndpointSpec {
                id: Some(format!("ep-{t}")),
                token: (*t).into(),
                app_version: if *t == "gw" { "gw-v1" } else { APP_VERSION }.into(),
                metadata: Default::default(),
            })
            .collect(),
        credentials: vec![ccm::BasicCredentialSpec {
            username: USER.into(),
            password_hash: hash.into(),
            applications: Some(vec!["*".into()]),
            endpoints: vec![],
        }],
        ..CoreConfig::new(dir.join("core.sqlite"))
    };
    config.mqtt.listen = listen;
    config
}

/// A running core and the token that stops it.
pub struct RunningCore {
    pub core: Core,
    pub stop: CancellationToken,
}

impl RunningCore {
    pub async fn start(dir: &std::path::Path, listen: SocketAddr, tokens: &[&str]) -> Self {
        let stop = CancellationToken::new();
        let core = Core::start(core_config(dir, listen, tokens), stop.clone())
            .await
            .expect("core starts");
        Self { core, stop }
    }

    /// Stops the listeners and waits for them (the port is free again afterwards).
    pub async fn shut(self) {
        self.stop.cancel();
        self.core.wait().await;
    }
}

/// A Modbus TCP slave with holding registers 0..64 (shared, so tests can read and set
/// them) that answers exception 2 for addresses past the end.
#[derive(Clone, Default)]
pub struct Registers(pub Arc<Mutex<Vec<u16>>>);

impl Registers {
    pub fn new(words: &[u16]) -> Self {
        let mut v = vec![0u16; 64];
        v[..words.len()].copy_from_slice(words);
        Self(Arc::new(Mutex::new(v)))
    }

    pub fn get(&self, i: usize) -> u16 {
        self.0.lock().expect("lock")[i]
    }
}

impl tokio_modbus::server::Service for Registers {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut regs = self.0.lock().expect("lock");
        let range = |addr: u16, n: usize| {
            let a = usize::from(addr);
            (a + n <= regs.len()).then_some(a..a + n)
        };
        let out = match req {
            Request::ReadHoldingRegisters(addr, n) => range(addr, usize::from(n))
                .map(|r| Response::ReadHoldingRegisters(regs[r].to_vec()))
                .ok_or(ExceptionCode::IllegalDataAddress),
            Request::WriteSingleRegister(addr, v) => match range(addr, 1) {
                Some(r) => {
                    regs[r.start] = v;
                    Ok(Response::WriteSingleRegister(addr, v))
                }
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            Request::WriteMultipleRegisters(addr, words) => match range(addr, words.len()) {
                Some(r) => {
                    regs[r].copy_from_slice(&words);
                    Ok(Response::WriteMultipleRegisters(addr, words.len() as u16))
                }
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(out)
    }
}

/// Serves `regs` on 127.0.0.1 (a free port) until `stop`; returns the address.
pub async fn modbus_server(regs: Registers, stop: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::new(listener);
    tokio::spawn(async move {
        let on_connected = move |stream, socket_addr| {
            let regs = regs.clone();
            async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(regs.clone()))) }
        };
        let serve = server.serve(&on_connected, |e| eprintln!("modbus server: {e}"));
        tokio::select! {
            _ = stop.cancelled() => {}
            r = serve => { let _ = r; }
        }
    });
    addr
}

/// A free port on 127.0.0.1 (bound and released; used to restart a core on the same one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
