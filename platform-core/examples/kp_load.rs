//! Load tool for side-by-side benchmarks (not a test): N MQTT clients, each with up to W
//! QoS 1 messages outstanding, for S seconds, against the core or any MQTT broker.
//!
//! Modes:
//! - `kp1`: 2/DCP requests with request IDs (`kp1/<avn>/dcx/<token>/json/<id>`), each
//!   answered when its `/status` arrives (an `/error` counts as an error);
//! - `echo`: QoS 1 publishes to a topic the client itself subscribed to, each answered
//!   when the broker relays it back (what Mosquitto does for the same payload);
//! - `storm`: N clients connect at once and hold their connections for S seconds;
//!   reports how long until all were accepted.
//!
//! Prints one JSON line: answered, errors, per second, latency p50/p99/p999 (ms).
//! Run by `tests/bench/core_vs_broker.py`; `--help` lists the options.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Kp1,
    Echo,
    Storm,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Server address, `host:port`.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Messages outstanding per client.
    #[arg(long, default_value_t = 64)]
    window: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// kp1: application version.
    #[arg(long, default_value = "bench-v1")]
    avn: String,
    /// kp1: the extension instance the requests go to (a DCX instance, local or external).
    #[arg(long, default_value = "dcx")]
    extension: String,
    /// kp1: client c uses endpoint token `<prefix><c>` (or `<prefix><c % endpoints>`).
    #[arg(long, default_value = "t")]
    token_prefix: String,
    /// kp1: spread the clients over this many endpoints (client c uses endpoint
    /// `c % endpoints`); 0: one endpoint per client.
    #[arg(long, default_value_t = 0)]
    endpoints: usize,
    /// Set TCP_NODELAY on the clients' sockets.
    #[arg(long)]
    nodelay: bool,
    /// Also write every answer as a CSV line `client,sent_ms,latency_ms` to this file (to
    /// tell a stall of the whole server from one connection served late).
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
}

/// Latencies and counts of one run, shared by every client.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// With `--trace`: (client, sent µs after the start, latency µs) of every answer.
    trace: Option<Mutex<Vec<(u32, u32, u32)>>>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (host, port) = match args.addr.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse::<u16>().unwrap_or(0)),
        None => (args.addr.clone(), 0),
    };
    if port == 0 {
        eprintln!("--addr must be host:port");
        std::process::exit(2);
    }
    let tally = Arc::new(Tally {
        trace: args.trace.as_ref().map(|_| Mutex::default()),
        ..Tally::default()
    });
    let connected = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let stop = began + Duration::from_secs(args.seconds);
    let mut accepted = Vec::new();
    for c in 0..args.clients {
        let mut o = MqttOptions::new(format!("load-{}-{c}", std::process::id()), &host, port);
        if let (Some(u), Some(p)) = (&args.user, &args.password) {
            o.set_credentials(u.clone(), p.clone());
        }
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(u16::try_from(args.window.max(1)).unwrap_or(u16::MAX));
        let (client, mut events) = AsyncClient::new(o, args.window * 2 + 10);
        if args.nodelay {
            let mut net = events.network_options();
            net.set_tcp_nodelay(true);
            events.set_network_options(net);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        accepted.push(rx);
        let ctx = ClientCtx {
            index: c,
            mode: args.mode,
            topic_base: match args.mode {
                Mode::Kp1 => format!(
                    "kp1/{}/{}/{}{}/json",
                    args.avn,
                    args.extension,
                    args.token_prefix,
                    c.checked_rem(args.endpoints).unwrap_or(c)
                ),
                _ => format!("load/{}/{c}", std::process::id()),
            },
            tally: tally.clone(),
            connected: connected.clone(),
            stop,
            began,
            window: args.window,
        };
        tokio::spawn(run_client(ctx, client, events, tx));
    }
    if args.mode == Mode::Storm {
        let mut failed = 0u64;
        for rx in accepted {
            if !matches!(rx.await, Ok(true)) {
                failed += 1;
            }
        }
        let secs = began.elapsed().as_secs_f64();
        println!(
            "{{\"mode\":\"storm\",\"clients\":{},\"connected\":{},\"failed\":{failed},\"seconds_to_connect\":{secs:.3}}}",
            args.clients,
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep_until(stop.into()).await;
        std::process::exit(0);
    }
    tokio::time::sleep_until(stop.into()).await;
    let secs = began.elapsed().as_secs_f64();
    let n = tally.answered.load(Ordering::Relaxed);
    let mut lat =
        std::mem::take(&mut *tally.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    if let (Some(path), Some(trace)) = (&args.trace, &tally.trace) {
        let rows = std::mem::take(&mut *trace.lock().unwrap_or_else(|p| p.into_inner()));
        let mut csv = String::from("client,sent_ms,latency_ms\n");
        for (c, sent, us) in rows {
            csv.push_str(&format!(
                "{c},{:.3},{:.3}\n",
                f64::from(sent) / 1000.0,
                f64::from(us) / 1000.0
            ));
        }
        if let Err(e) = std::fs::write(path, csv) {
            eprintln!("--trace {}: {e}", path.display());
        }
    }
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    println!(
        "{{\"mode\":\"{}\",\"clients\":{},\"window\":{},\"connected\":{},\"answered\":{n},\"errors\":{},\"seconds\":{secs:.2},\"per_second\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"p999_ms\":{:.2}}}",
        if args.mode == Mode::Kp1 { "kp1" } else { "echo" },
        args.clients,
        args.window,
        connected.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        n as f64 / secs,
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    std::process::exit(0);
}

struct ClientCtx {
    index: usize,
    mode: Mode,
    topic_base: String,
    tally: Arc<Tally>,
    connected: Arc<AtomicU64>,
    stop: Instant,
    began: Instant,
    window: usize,
}

type Sent = Arc<Mutex<HashMap<u64, Instant>>>;

/// One client: its event loop (answers, latencies) and, once ready, its sender task.
/// Each answer before the stop time is counted and its latency recorded at once.
async fn run_client(
    ctx: ClientCtx,
    client: AsyncClient,
    mut events: EventLoop,
    accepted: tokio::sync::oneshot::Sender<bool>,
) {
    let slots = Arc::new(Semaphore::new(0));
    let sent: Sent = Arc::default();
    let mut accepted = Some(accepted);
    loop {
        let ev = match events.poll().await {
            Ok(ev) => ev,
            Err(e) => {
                if let Some(a) = accepted.take() {
                    eprintln!("client {}: {e}", ctx.index);
                    let _ = a.send(false);
                    return;
                }
                ctx.tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                ctx.connected.fetch_add(1, Ordering::Relaxed);
                if ctx.mode == Mode::Echo {
                    let _ = client.subscribe(&ctx.topic_base, QoS::AtLeastOnce).await;
                } else {
                    start(&ctx, &client, &slots, &sent, &mut accepted);
                }
            }
            Event::Incoming(Packet::SubAck(_)) => {
                start(&ctx, &client, &slots, &sent, &mut accepted)
            }
            Event::Incoming(Packet::Publish(p)) => {
                let id = match ctx.mode {
                    Mode::Kp1 => p
                        .topic
                        .rsplit('/')
                        .nth(1)
                        .and_then(|s| s.parse::<u64>().ok()),
                    _ => std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.split(',').next())
                        .and_then(|s| s.trim_start_matches("[{\"n\":").parse::<u64>().ok()),
                };
                let at = id.and_then(|id| sent.lock().ok()?.remove(&id));
                let ok = ctx.mode == Mode::Echo || p.topic.ends_with("/status");
                if Instant::now() <= ctx.stop {
                    if ok {
                        ctx.tally.answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ctx.tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(at) = at {
                        let us = u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX);
                        if let Ok(mut l) = ctx.tally.latencies_us.lock() {
                            l.push(us);
                        }
                        if let Some(Ok(mut t)) = ctx.tally.trace.as_ref().map(|t| t.lock()) {
                            let sent = at.duration_since(ctx.began).as_micros();
                            t.push((ctx.index as u32, sent as u32, us));
                        }
                    }
                }
                slots.add_permits(1);
            }
            _ => {}
        }
        if Instant::now() > ctx.stop && ctx.mode != Mode::Storm {
            return;
        }
    }
}

/// Once connected (and subscribed, in echo mode): the sender task, `window` at a time.
fn start(
    ctx: &ClientCtx,
    client: &AsyncClient,
    slots: &Arc<Semaphore>,
    sent: &Sent,
    accepted: &mut Option<tokio::sync::oneshot::Sender<bool>>,
) {
    let Some(a) = accepted.take() else {
        return; // a reconnect: the sender runs already
    };
    let _ = a.send(true);
    if ctx.mode == Mode::Storm {
        return;
    }
    slots.add_permits(ctx.window);
    let (client, slots, sent) = (client.clone(), slots.clone(), sent.clone());
    let (mode, base, stop) = (ctx.mode, ctx.topic_base.clone(), ctx.stop);
    tokio::spawn(async move {
        let mut id: u64 = 0;
        while Instant::now() < stop {
            let Ok(permit) = slots.acquire().await else {
                return;
            };
            permit.forget();
            id += 1;
            // ~40 bytes of JSON either way; the echo payload leads with its ID.
            let body = format!("[{{\"n\":{id},\"temperature\":{}.5}}]", id % 40);
            let topic = match mode {
                Mode::Kp1 => format!("{base}/{id}"),
                _ => base.clone(),
            };
            if let Ok(mut s) = sent.lock() {
                s.insert(id, Instant::now());
            }
            if client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                return;
            }
        }
    });
}
