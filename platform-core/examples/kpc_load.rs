//! Load generator for the core's KPC (benchmark, not a test): C MQTT clients, each
//! sending 2/DCP requests for E endpoints with up to W requests outstanding, for S
//! seconds; prints requests answered per second. Run by `tests/bench/core_bench.py`.
//!
//! Usage: kpc_load <host:port> <user> <password> <app version> <token prefix>
//!        <clients> <endpoints per client> <window> <seconds>

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 10 {
        eprintln!("usage: kpc_load <host:port> <user> <password> <avn> <token prefix> <clients> <endpoints/client> <window> <seconds>");
        std::process::exit(2);
    }
    let (host, port) = a[1].split_once(':').expect("host:port");
    let port: u16 = port.parse().expect("port");
    let clients: usize = a[6].parse().expect("clients");
    let per: usize = a[7].parse().expect("endpoints per client");
    let window: usize = a[8].parse().expect("window");
    let secs: u64 = a[9].parse().expect("seconds");
    let answered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut o = MqttOptions::new(format!("load-{c}"), host, port);
        o.set_credentials(a[2].clone(), a[3].clone());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(u16::try_from(window.max(10)).unwrap_or(100));
        let (client, mut events) = AsyncClient::new(o, window * 2);
        let (answered, errors) = (answered.clone(), errors.clone());
        let slots = Arc::new(Semaphore::new(window));
        let reader_slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(ev) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    if p.topic.ends_with("/status") {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    reader_slots.add_permits(1);
                }
                if Instant::now() > stop + Duration::from_secs(2) {
                    break;
                }
            }
        }));
        let (avn, prefix) = (a[4].clone(), a[5].clone());
        tasks.push(tokio::spawn(async move {
            let mut id: u32 = 0;
            while Instant::now() < stop {
                let Ok(permit) = slots.acquire().await else {
                    break;
                };
                permit.forget();
                id = id % 2_000_000_000 + 1;
                let ep = c * per + (id as usize % per);
                let topic = format!("kp1/{avn}/dcx/{prefix}{ep}/json/{id}");
                let body = format!(r#"[{{"temperature":{}.5,"n":{id}}}]"#, id % 40);
                if client
                    .publish(topic, QoS::AtLeastOnce, false, body)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep_until((stop).into()).await;
    let n = answered.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"answered\": {n}, \"errors\": {}, \"seconds\": {secs:.2}, \"per_second\": {:.0}}}",
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
    std::process::exit(0);
}
