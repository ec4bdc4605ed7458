//! How long the core's store takes to settle recent time series points (not a test).
//!
//! Opens a fresh core database in a temporary directory (WAL, `synchronous = FULL`, as
//! the core runs it), makes `--series` series, then round after round appends 128 points
//! per series (one settle's worth, in one transaction, as group commits would) and times
//! the settle that moves them, a read of one series' whole range and of its newest point.
//! Prints one JSON line per round.
//!
//! `cargo run --release -p platform-core --example settle_time -- --series 2000 --rounds 10`

use std::time::Instant;

use clap::Parser;
use platform_core::store::StoreHandle;
use platform_core::tsdb::{self, DataPoint, SeriesCache, StoredSample};

#[derive(Debug, Parser)]
struct Args {
    /// Series (one endpoint each); past 512, points go through `points_recent`.
    #[arg(long, default_value_t = 2000)]
    series: i64,
    #[arg(long, default_value_t = 10)]
    rounds: i64,
    /// Keep the database at this path (a new file) instead of a temporary one.
    #[arg(long)]
    db: Option<std::path::PathBuf>,
}

fn point(ts_ms: i64, value: f64) -> DataPoint {
    DataPoint {
        series: "auto~t".into(),
        ts_ms,
        value,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let dir = tempfile::tempdir()?;
    let path =
        a.db.clone()
            .unwrap_or_else(|| dir.path().join("core.sqlite"));
    let store = StoreHandle::open(&path)?;
    let series = a.series;
    let per_series = 128;
    for round in 0..a.rounds {
        store
            .call(move |c| {
                let tx = c.transaction()?;
                let mut known = SeriesCache::default();
                for i in 0..series * per_series {
                    let ep = format!("ep{}", i % series);
                    let ts = round * per_series + i / series;
                    let sample = StoredSample::new("{}", vec![point(ts, i as f64 * 0.37)]);
                    tsdb::append_samples(&tx, &mut known, &ep, 0, &[sample])?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        let t = Instant::now();
        store.call(tsdb::settle_now).await?;
        let settle = t.elapsed();
        let t = Instant::now();
        let n = store
            .call(|c| Ok(tsdb::range(c, "ep7", "auto~t", i64::MIN, i64::MAX)?.len()))
            .await?;
        let range = t.elapsed();
        let t = Instant::now();
        store.call(|c| tsdb::last(c, "ep7", "auto~t")).await?;
        let last = t.elapsed();
        println!(
            "{{\"round\":{round},\"points\":{},\"settle_ms\":{:.1},\"settle_us_per_point\":{:.3},\
             \"range_points\":{n},\"range_ms\":{:.2},\"last_ms\":{:.2}}}",
            series * per_series,
            settle.as_secs_f64() * 1e3,
            settle.as_secs_f64() * 1e6 / (series * per_series) as f64,
            range.as_secs_f64() * 1e3,
            last.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
