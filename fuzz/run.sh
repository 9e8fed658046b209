#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation and runs each for a
# bounded time. Usage: fuzz/run.sh [SECONDS]   (default 60 s per target)
#
# Needs only the stable toolchain and a C++ compiler (libfuzzer-sys compiles libFuzzer):
# the flags below are the ones `cargo fuzz build --sanitizer none` passes, so cargo-fuzz
# itself is optional (`cargo fuzz run TARGET` works on the same layout). Without
# AddressSanitizer nothing is lost for us: the code under test has no `unsafe`, so a bug
# shows up as a panic, which libFuzzer reports as a crash.
#
# Inputs start from the committed seeds (fuzz/seeds/TARGET) plus whatever earlier runs
# found (fuzz/corpus/TARGET, not committed). Exits non-zero on the first crash; the
# crashing input is written to fuzz/artifacts/TARGET/ and the output to
# fuzz/artifacts/TARGET.log. Turn a crash into a regression test before fixing it.
set -uo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")"
triple="$(rustc -vV | sed -n 's/^host: //p')"
targets=(exploit_json webhook_json url_guard payload_roundtrip)

# With --target, RUSTFLAGS reach only the target's crates, not build scripts or proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --locked --release --target "$triple" --bins || exit 1

for t in "${targets[@]}"; do
    echo "== $t: ${seconds}s"
    mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
    "target/$triple/release/$t" "corpus/$t" "seeds/$t" -max_total_time="$seconds" \
        -max_len=4096 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"artifacts/$t.log" 2>&1
    status=$?
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)|panicked' "artifacts/$t.log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "artifacts/$t.log" >&2
        echo "fuzz target $t failed (exit $status); the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "all fuzz targets ran ${seconds}s each without a crash"
