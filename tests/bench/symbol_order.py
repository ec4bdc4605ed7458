"""Writes gateway/link/symbol-order.txt: the functions a bridge runs in its steady loop,
hottest first, for LLD to place side by side (see gateway/build.rs). Not a test; run it
again after a dependency, toolchain or large code change (the benchmark
tests/bench/gateway_rss.py reports how much of the list the current build still matches).

How the list is found, on the scenario of gateway_rss.py (10 Modbus devices x 30 registers
every second, forwarding to the embedded core):
1. an instrumented build (`-Cprofile-generate`, llvm-tools' llvm-profdata) runs twice, for
   a short and a long time; the functions whose call counts grew with the run length are
   the steady loop's (start-up and shutdown run the same in both runs);
2. code the instrumentation cannot see (the standard library, SQLite's C) comes from
   `perf record --call-graph dwarf` on the release build;
3. the names are mapped onto the release build's own symbols (the hash suffix of a Rust
   symbol can differ between the two builds).

Needs root (perf), Debian's linux-perf and `rustup component add llvm-tools` (done here).
Names of the earlier list that the build still has are kept (after the new ones), so
running it two or three times, building in between, gathers what one run misses.

Usage: tests/.venv/bin/python tests/bench/symbol_order.py [--short 35] [--long 95] [--reuse-profiles]
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bench"))
import gateway_rss  # noqa: E402

OUT = ROOT / "gateway" / "link" / "symbol-order.txt"
RELEASE = ROOT / "target" / "release" / "kp-gateway"
PGO_DIR = Path(os.environ.get("KP_SYMBOL_ORDER_DIR", ROOT / "target" / "symbol-order"))
HASH = re.compile(r"17h[0-9a-f]{16}E$")


def sh(*args, **kw):
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], check=True, **kw)


def llvm_tool(name: str) -> Path:
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    host = re.search(r"host: (\S+)", subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout)[1]
    tool = Path(sysroot) / "lib" / "rustlib" / host / "bin" / name
    if not tool.exists():
        sh("rustup", "component", "add", "llvm-tools")
    return tool


def run_scenario(binary: Path, seconds: int, env_extra: dict, during=None) -> int:
    """The gateway_rss.py scenario for `seconds` after the first samples; `during(pid)`
    runs meanwhile. Returns the gateway's PID."""
    os.environ["KP_GATEWAY_BIN"] = str(binary)
    gateway_rss.conftest.BIN = binary
    gateway_rss.BIN = binary

    pids = []

    def measure(pid, _seconds, _warmup, _count):
        pids.append(pid)
        if during:
            during(pid)
        else:
            time.sleep(seconds)
        return {}

    gateway_rss.measure = measure
    old_env = dict(os.environ)
    os.environ.update(env_extra)
    try:
        with tempfile.TemporaryDirectory(prefix="symbol-order-") as d:
            tmp = Path(d)
            device, port = gateway_rss.start_devices(tmp)
            try:
                gateway_rss.run_kp_gateway(tmp, port, seconds, 0)
            finally:
                device.stop()
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    return pids[0]


def pgo_counts(profdata: Path, merged: Path) -> dict:
    """How much every instrumented function ran (its block counts summed), by symbol name."""
    text = subprocess.run([str(profdata), "show", "--all-functions", "--counts", str(merged)],
                          capture_output=True, text=True, check=True).stdout
    # IR instrumentation counts blocks and edges, not entries: their sum measures how much
    # a function ran, which is all the comparison of two runs needs.
    counts, name = {}, None
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("    ") and line.rstrip().endswith(":"):
            name = line.strip()[:-1].split(";")[-1]
        elif name and line.strip().startswith("Block counts:"):
            total = sum(int(x) for x in re.findall(r"\d+", line.split(":", 1)[1]))
            counts[name] = counts.get(name, 0) + total
    return counts


def perf_functions(binary: Path, seconds: int) -> collections.Counter:
    """Functions of `binary` on the sampled stacks of its steady loop (samples per name)."""
    data = PGO_DIR / "perf.data"

    def during(pid):
        time.sleep(5)
        # CPU samples find what runs often; every page fault (with its stack) finds code
        # that runs rarely but still pulls in a window of pages (the footprint module gives
        # the code back 30 s after start, so the loop's own faults come after that).
        # (Faults come in bursts, so they carry no stack: the faulting function is enough.)
        sh("perf", "record", "-q", "-m", "4096", "-e", "cpu-clock/freq=4999/",
           "-e", "page-faults/period=1,call-graph=no/", "--call-graph", "dwarf,16384", "-p", pid, "-o", data,
           "--", "sleep", seconds)

    run_scenario(binary, seconds, {}, during)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym,dso", "--no-demangle"],
                            capture_output=True, text=True).stdout
    found = collections.Counter()
    for line in script.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == f"({binary})":
            found[parts[1]] += 1
    return found


def release_symbols(binary: Path) -> dict:
    """Function symbols of the release build: name -> size, and hash-less name -> names."""
    out = subprocess.run(["nm", "-S", "--defined-only", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    sizes, by_stem = {}, collections.defaultdict(list)
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4 and p[2] in "tTwW":
            sizes[p[3]] = int(p[1], 16)
            by_stem[HASH.sub("", p[3])].append(p[3])
    if not sizes:
        sys.exit(f"{binary} has no symbols (the release profile must keep them: strip = \"none\")")
    return sizes, by_stem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", type=int, default=35)
    ap.add_argument("--long", type=int, default=95)
    ap.add_argument("--reuse-profiles", action="store_true",
                    help="take the instrumented runs' counts from the last run (same code)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (perf, and the gateway as the service user)")
    profdata = llvm_tool("llvm-profdata")
    PGO_DIR.mkdir(parents=True, exist_ok=True)
    sh("cargo", "build", "--release", "-p", "kp-gateway", cwd=ROOT)
    # Same profile as the release build (RUSTFLAGS do not change symbol names; profile
    # settings such as `strip` do).
    env = dict(os.environ, RUSTFLAGS=f"-Cprofile-generate={PGO_DIR / 'raw'}")
    if not a.reuse_profiles:
        sh("cargo", "build", "--release", "-p", "kp-gateway", "--target-dir", PGO_DIR / "target", cwd=ROOT,
           env=env)
    instrumented = PGO_DIR / "target" / "release" / "kp-gateway"

    runs = {}
    for label, seconds in (("short", a.short), ("long", a.long)):
        merged = PGO_DIR / f"{label}.profdata"
        if not (a.reuse_profiles and merged.exists()):
            raw = PGO_DIR / f"raw-{label}"
            shutil.rmtree(raw, ignore_errors=True)
            raw.mkdir(parents=True)
            os.chmod(raw, 0o777)  # the gateway runs as `nobody`
            # The core (a copy of the same binary) writes its own file; only the gateway's counts.
            pid = run_scenario(instrumented, seconds, {"LLVM_PROFILE_FILE": str(raw / "%p.profraw")})
            sh(profdata, "merge", "-o", merged, raw / f"{pid}.profraw")
        runs[label] = pgo_counts(profdata, merged)
    grown = {n: c - runs["short"].get(n, 0) for n, c in runs["long"].items() if c > runs["short"].get(n, 0)}
    sampled = perf_functions(RELEASE, 90)

    sizes, by_stem = release_symbols(RELEASE)
    order, seen = [], set()
    for name, _ in sorted(grown.items(), key=lambda kv: -kv[1]):
        for sym in ([name] if name in sizes else by_stem.get(HASH.sub("", name), [])):
            if sym not in seen:
                seen.add(sym)
                order.append(sym)
    from_pgo = len(order)
    for name, _ in sampled.most_common():
        if name in sizes and name not in seen:
            seen.add(name)
            order.append(name)
    # What an earlier run saw stays listed, after the new findings: sampling and faults
    # see different functions each time (the faults depend on the current layout).
    kept = [n for n in (OUT.read_text().split() if OUT.exists() else []) if n in sizes and n not in seen]
    order += kept
    OUT.write_text("".join(n + "\n" for n in order))
    kib = sum(sizes[n] for n in order) / 1024
    print(f"{len(grown)} functions ran in the steady loop (instrumented), {from_pgo} release symbols; "
          f"{len(order) - from_pgo - len(kept)} more from perf, {len(kept)} kept from the earlier list; "
          f"{kib:.0f} KiB of code -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
