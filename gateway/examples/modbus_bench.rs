//! Benchmark: Modbus TCP polling throughput with the read planner vs one read per point.
//!
//! Usage: `cargo run --release -p kp-gateway --example modbus_bench -- <IP:port> [seconds]`
//! (tests/bench/modbus_bench.sh starts a pymodbus device and runs this). Reports
//! requests/s, decoded points/s and reads per poll cycle for both strategies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kp_gateway::modbus::codec::{decode_words, PointCodec};
use kp_gateway::modbus::planner::{plan, Limits, PlanPoint, ReadRequest};
use kp_gateway::modbus::types::{ByteOrder, DataType, RegisterTable};
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::Slave;

/// A realistic scattered map: 100 points of mixed types over 0..700.
fn points() -> Vec<(u16, DataType)> {
    let mut v = Vec::new();
    for i in 0..30 {
        v.push((i * 2, DataType::F32));
    }
    for i in 0..25 {
        v.push((100 + i * 2, DataType::F32));
    }
    for i in 0..20 {
        v.push((300 + i * 4, DataType::U64));
    }
    for i in 0..25 {
        v.push((500 + i * 7, DataType::U16));
    }
    v
}

fn codec(t: DataType) -> PointCodec {
    PointCodec {
        table: RegisterTable::Holding,
        data_type: t,
        order: ByteOrder::Abcd,
        bit: None,
        scale: 1.0,
        offset: 0.0,
    }
}

async fn run(
    ctx: &mut Context,
    reqs: &[ReadRequest],
    pts: &[(u16, DataType)],
    secs: f64,
) -> (u64, u64, Duration) {
    let (mut requests, mut decoded, mut cycles) = (0u64, 0u64, 0u32);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        for r in reqs {
            let words = match ctx.read_holding_registers(r.start, r.count).await {
                Ok(Ok(w)) => w,
                other => panic!("read {}+{} failed: {other:?}", r.start, r.count),
            };
            requests += 1;
            for (idx, off) in &r.members {
                let (_, t) = pts[*idx];
                let w = usize::from(t.width());
                let off = usize::from(*off);
                if decode_words(&codec(t), &words[off..off + w]).is_ok() {
                    decoded += 1;
                }
            }
        }
        cycles += 1;
    }
    (requests, decoded, start.elapsed() / cycles.max(1))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: modbus_bench <IP:port> [seconds]");
        std::process::exit(2)
    });
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let pts = points();
    let plan_pts: Vec<PlanPoint> = pts
        .iter()
        .enumerate()
        .map(|(index, (address, t))| PlanPoint {
            index,
            table: RegisterTable::Holding,
            address: *address,
            width: t.width(),
        })
        .collect();
    let planned = plan(&plan_pts, Limits::default()).expect("plannable map");
    let naive: Vec<ReadRequest> = plan_pts
        .iter()
        .map(|p| ReadRequest {
            table: p.table,
            start: p.address,
            count: p.width,
            members: vec![(p.index, 0)],
        })
        .collect();
    let mut ctx = tcp::connect_slave(addr, Slave(1)).await.expect("connect");
    println!(
        "points: {}; reads per poll cycle: planned {}, one-per-point {}",
        pts.len(),
        planned.len(),
        naive.len()
    );
    for (name, reqs) in [("planned", &planned), ("one-per-point", &naive)] {
        let (requests, decoded, cycle) = run(&mut ctx, reqs, &pts, secs).await;
        println!(
            "{name:>14}: {:>8.0} requests/s {:>9.0} points/s  poll cycle {:>7.2} ms",
            requests as f64 / secs,
            decoded as f64 / secs,
            cycle.as_secs_f64() * 1000.0
        );
    }
}
