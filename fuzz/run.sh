#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time (default 60 s each).
# Usage: fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Uses the nightly toolchain when
# installed, otherwise stable rustc with RUSTC_BOOTSTRAP=1 (sanitizer flags need it).
# Exits non-zero on the first crash; the crashing input is under fuzz/artifacts/TARGET/
# and the whole output in fuzz/artifacts/TARGET.log.
set -uo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
targets=(exploit_json webhook_json url_guard payload_roundtrip)
"${fuzz[@]}" build || exit 1
mkdir -p artifacts
for t in "${targets[@]}"; do
    echo "== $t: ${seconds}s"
    mkdir -p "corpus/$t"
    "${fuzz[@]}" run "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=4096 \
        -print_final_stats=1 >"artifacts/$t.log" 2>&1
    status=$?
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)|panicked' "artifacts/$t.log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "artifacts/$t.log" >&2
        echo "fuzz target $t failed (exit $status); see fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "all fuzz targets ran ${seconds}s each without a crash"
