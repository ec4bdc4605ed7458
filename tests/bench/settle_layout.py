"""What the embedded core's settle would cost with another layout of `points` (not a test).

Until 2026-12-06 the core appended points with many series to `points_recent` and moved
them into `points` in bulk (the settle). `points` is keyed by series, so a settle inserted
each point into the middle of the B-tree, next to its series' older points (the core now
settles into blocks, one row per series: `platform-core/examples/settle_time.rs`). This
script measures, with Python's `sqlite3` on a scratch database (WAL, synchronous=FULL, a
16 MiB page cache, as the core), the settle's cost per point and a read of one series:

- `series`: the core's layout, `PRIMARY KEY (series_id, ts_ms, seq)`;
- `run`: the key starts with the settle's number, `(run, series_id, ts_ms, seq)`: each
  settle's points go to the end of the B-tree, and a read of one series needs one seek
  per settle (runs would have to be merged over time, as an LSM tree does).

Usage: tests/.venv/bin/python tests/bench/settle_layout.py [--series 2000] [--settles 24]
"""

import argparse
import os
import random
import sqlite3
import tempfile
import time


def measure(layout, series, per_series, settles, folder):
    path = os.path.join(folder, f"{layout}.sqlite")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("PRAGMA cache_size=-16384")
    run_col = "run INTEGER NOT NULL, " if layout == "run" else ""
    run_key = "run, " if layout == "run" else ""
    c.execute(f"CREATE TABLE points({run_col}series_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, "
              f"seq INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY({run_key}series_id, ts_ms, seq)) WITHOUT ROWID")
    c.execute("CREATE TABLE points_recent(series_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, "
              "seq INTEGER NOT NULL, value REAL NOT NULL)")
    move = (f"INSERT INTO points SELECT {'?, ' if layout == 'run' else ''}series_id, ts_ms, seq, value "
            "FROM points_recent ORDER BY series_id, ts_ms, seq")
    rng = random.Random(1)
    ts, seq, times = 1_700_000_000_000, 0, []
    for r in range(settles):
        rows = []
        for _ in range(per_series):
            for s in range(1, series + 1):
                seq += 1
                rows.append((s, ts + seq, seq, rng.random() * 40))
        c.execute("BEGIN")
        c.executemany("INSERT INTO points_recent VALUES (?, ?, ?, ?)", rows)
        c.execute("COMMIT")
        t = time.perf_counter()
        c.execute("BEGIN")
        c.execute(move, (r,) if layout == "run" else ())
        c.execute("DELETE FROM points_recent")
        c.execute("COMMIT")
        times.append(time.perf_counter() - t)
    points = series * per_series
    # A read of one series, all of it, in time order (with `run`: one seek per settle).
    if layout == "run":
        query = ("WITH RECURSIVE runs(r) AS (SELECT 0 UNION ALL SELECT r + 1 FROM runs WHERE r + 1 < ?) "
                 "SELECT ts_ms, value FROM runs JOIN points ON run = r AND series_id = ? ORDER BY ts_ms, seq")
        args = (settles, series // 2)
    else:
        query, args = "SELECT ts_ms, value FROM points WHERE series_id = ? ORDER BY ts_ms, seq", (series // 2,)
    t = time.perf_counter()
    for _ in range(20):
        n = len(c.execute(query, args).fetchall())
    read_ms = (time.perf_counter() - t) / 20 * 1000
    c.close()
    return {
        "layout": layout,
        "points_per_settle": points,
        "settle_ms": [round(x * 1000) for x in times],
        "first_4_us_per_point": round(sum(times[:4]) / 4 / points * 1e6, 2),
        "last_4_us_per_point": round(sum(times[-4:]) / 4 / points * 1e6, 2),
        "read_one_series_ms": round(read_ms, 2),
        "read_points": n,
        "db_mib": round(os.path.getsize(path) / 2**20, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--per-series", type=int, default=32, help="points per series per settle (the core's)")
    ap.add_argument("--settles", type=int, default=24)
    a = ap.parse_args()
    print(f"sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="settle-layout-") as d:
        for layout in ("series", "run"):
            print(measure(layout, a.series, a.per_series, a.settles, d), flush=True)


if __name__ == "__main__":
    main()
