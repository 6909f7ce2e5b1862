#!/usr/bin/env bash
# Fuzzes every reader of outside input with libFuzzer (clang, ASan + UBSan), one target at a
# time, each for SECONDS of wall time.
#
#   scripts/fuzz.sh SECONDS [TARGET...]   targets: idx cifar svhn safetensors checkpoint train_config
#   scripts/fuzz.sh --seeds               rewrites the seed corpora in fuzz/corpus/
#
# New interesting inputs go to build-fuzz/corpus/<target>/ (not into the repository); a crash,
# leak, timeout or out-of-memory input is written to build-fuzz/artifacts/ and stops that
# target. Add such an input to fuzz/corpus/<target>/ once the reader is fixed: ctest replays
# every corpus file (fuzz_replay.<target>). Runs at nice 10 on one core (-jobs=1 equivalent);
# JEM_FUZZ_TIMEOUT (default 10 s) is the per-input time that counts as a hang, JEM_FUZZ_RSS_MB
# (default 2048) the memory that counts as a leak or runaway allocation, JEM_FUZZ_ASAN_OPTIONS
# extra ASan options (e.g. allocator_may_return_null=1 where a library allocates sizes read from
# the input, as libmatio did before src/data/mat5_check.cpp);
# set JEM_FUZZ_NICE to change the niceness. Summary lines go to build-fuzz/fuzz-summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-fuzz
all=(idx cifar svhn safetensors checkpoint train_config)

configure_and_build() {
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S . -B "$build" -DJEM_CUDA=OFF -DJEM_BUILD_TESTS=OFF -DJEM_BUILD_BENCH=OFF -DJEM_FUZZ=ON \
      "-DJEM_SANITIZE=address;undefined" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo
  fi
  local targets=()
  for t in "$@"; do targets+=("fuzz_$t"); done
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
}

if [ "${1:-}" = "--seeds" ]; then
  /usr/bin/python3 fuzz/make_seeds.py fuzz/corpus
  configure_and_build checkpoint
  mkdir -p fuzz/corpus/checkpoint
  JEM_FUZZ_WRITE_SEED=fuzz/corpus/checkpoint/tiny_wrn10_header "$build/fuzz/fuzz_checkpoint" -runs=0 >/dev/null 2>&1
  exit 0
fi

seconds="${1:?usage: scripts/fuzz.sh SECONDS [TARGET...] | --seeds}"
shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
configure_and_build "${targets[@]}"
mkdir -p "$build/artifacts"
status=0
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t"
  log="$build/fuzz-$t.log"
  echo "fuzz: $t for $seconds s (log $log)"
  set +e
  # halt_on_error etc.: any sanitizer report is a finding. -timeout: an input taking > 10 s is
  # a hang. -rss_limit_mb: a reader allocating > 2 GB for a small file is a finding too.
  ASAN_OPTIONS="detect_leaks=1:halt_on_error=1${JEM_FUZZ_ASAN_OPTIONS:+:$JEM_FUZZ_ASAN_OPTIONS}" UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    nice -n "${JEM_FUZZ_NICE:-10}" "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout="${JEM_FUZZ_TIMEOUT:-10}" \
    -rss_limit_mb="${JEM_FUZZ_RSS_MB:-2048}" -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
    "$build/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  line="$(date -u +%FT%TZ) $t: ${seconds}s rc=$rc execs=${execs:-?} $(grep -E '^#[0-9]+.*(DONE|pulse|NEW)' "$log" | tail -1 | sed 's/^#[0-9]*[[:space:]]*//')"
  echo "$line" | tee -a "$build/fuzz-summary.txt"
  if [ $rc -ne 0 ]; then
    echo "fuzz: $t FAILED, see $log and $build/artifacts/$t-*"
    status=1
  fi
done
exit $status
