#!/usr/bin/env bash
# Runs every fuzz target for RUNS executions (default 10 million) from an empty corpus and
# prints one line per target: runs, seconds, coverage (edges), and the result. A crash
# stops that target with libFuzzer's report in target-logs/<target>.log and exit status 1
# at the end. JOBS targets run at once (default 2).
#   bash tests/fuzz/run-all.sh [RUNS] [JOBS]      (from the repository root; needs nightly
#                                                  and cargo-fuzz)
# TARGETS="a b" limits the targets; SANITIZER=none builds without AddressSanitizer (the
# code is safe Rust: libFuzzer still catches every panic and overflow check, several
# times faster); MAX_LEN=N caps the input length.
set -uo pipefail
RUNS=${1:-10000000}
JOBS=${2:-2}
cd "$(dirname "$0")/../.."
targets=${TARGETS:-$(sed -n 's/^name = "\(.*\)"/\1/p' tests/fuzz/Cargo.toml | grep -v "^kp-gateway-fuzz$")}
logs=tests/fuzz/target-logs
mkdir -p "$logs"
SANITIZER=${SANITIZER:-address}
MAX_LEN=${MAX_LEN:-}
cargo +nightly fuzz build --fuzz-dir tests/fuzz -O -s "$SANITIZER" >/dev/null 2>&1 || { echo "build failed"; exit 2; }
run_one() {
    t=$1
    corpus=$(mktemp -d)
    start=$(date +%s)
    cargo +nightly fuzz run --fuzz-dir tests/fuzz -O -s "$SANITIZER" "$t" "$corpus" -- \
        -runs="$RUNS" -print_final_stats=1 -rss_limit_mb=2048 ${MAX_LEN:+-max_len=$MAX_LEN} >"tests/fuzz/target-logs/$t.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "tests/fuzz/target-logs/$t.log" | tail -1)
    edges=$(grep -o 'cov: [0-9]*' "tests/fuzz/target-logs/$t.log" | tail -1 | cut -d' ' -f2)
    if [ "$rc" -eq 0 ]; then result="no crash"; else result="FAILED (exit $rc)"; fi
    printf '| %s | %s | %s | %s | %s |\n' "$t" "${execs:-?}" "$secs" "${edges:-?}" "$result"
    rm -rf "$corpus"
    return $rc
}
export -f run_one
export RUNS SANITIZER MAX_LEN
echo "| target | runs | seconds | coverage (edges) | result |"
echo "|---|---|---|---|---|"
printf '%s\n' $targets | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
