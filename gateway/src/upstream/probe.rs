//! "Test connection": tries the upstream step by step — TCP, then the MQTT CONNECT (with
//! the TLS handshake against the configured CA when TLS is on) with the configured
//! credentials — and says exactly which step failed and how. Uses its own client ID
//! (`<client_id>-test`) so the gateway's live session is not kicked off the broker.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming};
use serde::Serialize;

use super::Upstream;

/// Longest each step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
    pub millis: f64,
}

/// Runs the steps; stops at the first failure.
pub async fn probe(c: &Upstream) -> Vec<Step> {
    let mut steps = Vec::new();
    let t = Instant::now();
    let addr = format!("{}:{}", c.host, c.port);
    let tcp = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await;
    let (ok, detail) = match tcp {
        Ok(Ok(s)) => (
            true,
            format!(
                "connected to {}",
                s.peer_addr().map_or(addr.clone(), |a| a.to_string())
            ),
        ),
        Ok(Err(e)) => (false, format!("{addr}: {e}")),
        Err(_) => (false, format!("{addr}: no answer within {STEP_TIMEOUT:?}")),
    };
    steps.push(Step {
        step: "TCP",
        ok,
        detail,
        millis: t.elapsed().as_secs_f64() * 1000.0,
    });
    if !ok {
        return steps;
    }
    let step = if c.tls.is_some() {
        "TLS handshake + MQTT CONNECT"
    } else {
        "MQTT CONNECT"
    };
    let t = Instant::now();
    let mut test = c.clone();
    test.client_id = format!("{}-test", c.client_id);
    let opts = match super::session::mqtt_options(&test) {
        Ok(o) => o,
        Err(e) => {
            steps.push(Step {
                step: "TLS files",
                ok: false,
                detail: e.to_string(),
                millis: 0.0,
            });
            return steps;
        }
    };
    let (client, mut events) = AsyncClient::new(opts, 10);
    let outcome = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    return Ok(format!("accepted ({:?})", ack.code));
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let (ok, detail) = match outcome {
        Ok(Ok(d)) => (true, d),
        Ok(Err(e)) => (false, e),
        Err(_) => (false, format!("no CONNACK within {STEP_TIMEOUT:?}")),
    };
    if ok {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    }
    steps.push(Step {
        step,
        ok,
        detail,
        millis: t.elapsed().as_secs_f64() * 1000.0,
    });
    steps
}
