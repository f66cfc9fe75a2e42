#!/usr/bin/env bash
# The headline command of a 15-minute GPU window (issue 23): at most ~300 s in all, under a run
# tool limit of 330 s, so that a second try fits in the window. See benchmarks/README.md.
#
#   bash benchmarks/gpu_headline.sh --prepare     # here (network): MNIST-1D into .gpu_wheels_headline/
#   bash benchmarks/gpu_headline.sh OUT_DIR       # on the GPU machine (carry .gpu_wheels_headline)
#   PDIFF_HEADLINE_REHEARSAL=1 bash benchmarks/gpu_headline.sh OUT_DIR   # CPU rehearsal (automatic
#                                                 # where nvidia-smi sees no GPU)
#
# Steps, each time-boxed, each run whatever the others returned (gpu.sh's own phases are reused
# for env, build and tests):
#   env       versions, nvidia-smi, commit -> env.txt                       (gpu.sh __phase env)
#   build     TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1, CXX=/usr/bin/g++, pip install --no-build-isolation
#             --no-deps -e . against the machine's torch; checks has_cuda and a C++ error path
#             (gpu.sh __phase build) -> build.log. Skipped in a rehearsal unless PDIFF_HEADLINE_BUILD=1:
#             it would replace the checkout's pdiff_fast/_C*.so, which others use
#   headline  python -m benchmarks.gpu_headline run: spot checks, cold starts, timings beside their
#             peers with the floor, a profile -> summary.md, headline.json, profile.txt
#   memcheck  compute-sanitizer --tool memcheck of a tiny sample + decode + evaluate -> memcheck.txt
#   tests     pytest of the GPU tests with the time left (gpu.sh __phase tests) -> tests.txt
# then the final table, printed last. OUT_DIR never holds more than 8 files. summary.md is
# rewritten after every phase and every measurement, so a kill leaves a current one.
#
# Knobs: PYTHON (python3), PDIFF_HEADLINE_DEADLINE_S (300: the whole command), PDIFF_HEADLINE_RUN_END_S
# (245: when the headline process must have ended, from the start), PDIFF_HEADLINE_BUILD_S (110),
# PDIFF_HEADLINE_MEMCHECK_S (40), PDIFF_HEADLINE_TESTS (test paths), PDIFF_HEADLINE_TEST_WORKERS (12),
# PDIFF_HEADLINE_SKIP (steps or headline phases to leave out, e.g. "tests cold_compile"),
# PDIFF_HEADLINE_COMPILE_BACKEND (inductor), PDIFF_HEADLINE_CARRY (.gpu_wheels_headline).
set -uo pipefail
cd "$(dirname "$0")/.."
now() { date +%s; }
PY=${PYTHON:-python3}
CARRY=${PDIFF_HEADLINE_CARRY:-.gpu_wheels_headline}

if [ "${1:-}" = --prepare ]; then
  # only what the GPU image lacks (device KINDS.md): mnist1d (a pure-Python wheel; its needs are in
  # the image; without it gpu.sh's tests phase leaves out files that name mnist1d) and the MNIST-1D
  # data as pdiff_fast.data caches it. gpu_prepare.sh's other wheels (54 MiB) are not needed here.
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  rm -rf "$CARRY" && mkdir -p "$CARRY/cache"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$CARRY" mnist1d==0.0.2.post1 || exit 1
  PDIFF_FAST_CACHE="$CARRY/cache" "$PY" -c "from pdiff_fast import mnist1d; mnist1d(num_samples=5000)" || exit 1
  git rev-parse HEAD >"$CARRY/commit.txt" 2>/dev/null || echo unknown >"$CARRY/commit.txt"
  echo "gpu_headline: $CARRY holds $(du -sh "$CARRY" | cut -f1): $(cd "$CARRY" && ls *.whl cache/*)"
  exit 0
fi

OUT=${1:?usage: bash benchmarks/gpu_headline.sh OUT_DIR | --prepare}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(now)
DEADLINE=$(( START + ${PDIFF_HEADLINE_DEADLINE_S:-300} ))
RUN_END=$(( START + ${PDIFF_HEADLINE_RUN_END_S:-245} ))
if [ -z "${PDIFF_HEADLINE_REHEARSAL:-}" ]; then
  if nvidia-smi -L >/dev/null 2>&1; then PDIFF_HEADLINE_REHEARSAL=0; else PDIFF_HEADLINE_REHEARSAL=1; fi
fi
export PDIFF_HEADLINE_REHEARSAL PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# scratch outside OUT (OUT may hold 8 files): logs, junit, the caches the cold starts fill
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/pdiff_headline.XXXXXX")
export TRITON_CACHE_DIR=$SCRATCH/triton TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor
mkdir -p "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR"
[ -d "$CARRY/cache" ] && export PDIFF_FAST_CACHE=${PDIFF_FAST_CACHE:-$(cd "$CARRY/cache" && pwd)}
# the carried wheels (mnist1d) where the image lacks them, into scratch, never into the image's python
if ls "$CARRY"/*.whl >/dev/null 2>&1 && ! "$PY" -c "import mnist1d" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SCRATCH/site" "$CARRY"/*.whl &&
    export PYTHONPATH=$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}
fi
SKIP=" ${PDIFF_HEADLINE_SKIP:-} "
REHEARSAL=$PDIFF_HEADLINE_REHEARSAL
CHILD=

record() { "$PY" -m benchmarks.gpu_headline record "$OUT" "$@" >/dev/null 2>&1 || true; }
table() { "$PY" -m benchmarks.gpu_headline table "$OUT" 2>/dev/null || cat "$OUT/summary.md"; }
cleanup() { [ "${PDIFF_HEADLINE_KEEP:-0}" = 1 ] || rm -rf "$SCRATCH"; }

# a kill (the run tool's limit, timeout, ^C): stop the step in flight, which saves its summary,
# then print the table; summary.md is current whatever happens to this shell
on_term() {
  trap - TERM INT
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null && sleep 2
  record "${STEP:-?}" 143 "$(( $(now) - ${T0:-$START} ))" "" "killed (signal) after $(( $(now) - START )) s"
  table
  cleanup
  exit 143
}
trap on_term TERM INT

# step NAME BUDGET_S COMMAND...: COMMAND under timeout (SIGTERM, or SIGINT where pytest must write
# its report first: STEP_SIGNAL), never past DEADLINE; rc and seconds recorded in summary.md
step() {
  local name=$1 budget=$2 t rc
  shift 2
  STEP=$name
  if [[ "$SKIP" == *" $name "* ]]; then record "$name" skip 0 "$budget" "PDIFF_HEADLINE_SKIP"; return; fi
  t=$(( DEADLINE - $(now) ))
  [ "$t" -gt "$budget" ] && t=$budget
  if [ "$t" -lt 5 ]; then record "$name" skip 0 "$budget" "no time left"; echo "== $name: no time left"; return; fi
  echo "== $name (at most $t s)"
  record "$name" running "" "$t" "running"
  T0=$(now)
  timeout -s "${STEP_SIGNAL:-TERM}" -k 10 "$t" "$@" &
  CHILD=$!
  wait "$CHILD"
  rc=$?
  CHILD=
  LAST_RC=$rc
  local note=${NOTE:-}
  [ "$rc" -eq 124 ] && note="TIMED OUT after $t s; $note"
  record "$name" "$rc" "$(( $(now) - T0 ))" "$t" "$note"
  echo "== $name: rc $rc in $(( $(now) - T0 )) s"
}

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cat "$CARRY/commit.txt" 2>/dev/null || echo unknown)
record --commit "$COMMIT" --started-utc "$(date -u +%FT%TZ)"
echo "gpu_headline: OUT=$OUT rehearsal=$REHEARSAL python=$PY deadline ${PDIFF_HEADLINE_DEADLINE_S:-300} s" \
  "(headline until +$(( RUN_END - START )) s) scratch=$SCRATCH"

# env: gpu.sh's phase (versions, nvidia-smi, pip list) -> OUT/env.txt
NOTE="versions -> env.txt" step env 20 env OUT="$OUT" PY="$PY" WHEELS="$CARRY" bash benchmarks/gpu.sh __phase env

# build: gpu.sh's phase (the flags, /usr/bin/g++, the has_cuda and C++-error checks) -> build.log
if [ "$REHEARSAL" = 1 ] && [ "${PDIFF_HEADLINE_BUILD:-0}" != 1 ]; then
  record build skip 0 0 "rehearsal: the checkout's extension is used (PDIFF_HEADLINE_BUILD=1 builds it)"
  echo "rehearsal: build skipped (it would replace the checkout's pdiff_fast/_C*.so)" >"$OUT/build.log"
else
  NOTE="see build.log" step build "${PDIFF_HEADLINE_BUILD_S:-110}" \
    env ALL="$SCRATCH" PY="$PY" REHEARSAL="$REHEARSAL" bash benchmarks/gpu.sh __phase build >"$OUT/build.log" 2>&1
  if [ "$LAST_RC" != 0 ] && [ -f "$SCRATCH/build_pip.log" ]; then
    { echo "--- last lines of pip's log"; tail -60 "$SCRATCH/build_pip.log"; } >>"$OUT/build.log"
  fi
  if [ "$LAST_RC" != 0 ] && [ "$REHEARSAL" != 1 ]; then
    # without the editable install pdiff_fast.kernels is not importable and every Triton path falls
    # back to torch: install without the extension (seconds) so the headline still times the kernels
    NOTE="build failed: pdiff_fast installed without the extension (flatten/unflatten on torch)" \
      step build_no_ext 40 env PDIFF_FAST_NO_EXT=1 PIP_CONFIG_FILE=/dev/null "$PY" -m pip install --no-index \
      --no-build-isolation --no-deps -e . >>"$OUT/build.log" 2>&1
  fi
  tail -3 "$OUT/build.log"
fi

# headline: one python process, its phases time-boxed inside; ends by RUN_END
T=$(( RUN_END - $(now) ))
if [[ "$SKIP" == *" headline "* ]]; then
  record headline skip 0 "$T" "PDIFF_HEADLINE_SKIP"
elif [ "$T" -ge 20 ]; then
  STEP=headline
  T0=$(now)
  timeout -s TERM -k 10 $(( T + 10 )) "$PY" -m benchmarks.gpu_headline run "$OUT" --deadline "$RUN_END" \
    --scratch "$SCRATCH" &
  CHILD=$!
  wait "$CHILD"
  rc=$?
  CHILD=
  echo "== headline: rc $rc"
  record headline "$rc" "$(( $(now) - T0 ))" "$T" "the phases above (python -m benchmarks.gpu_headline run)"
else
  record headline skip 0 "$T" "no time left after the build"
fi

# memcheck: a tiny sample + decode + evaluate under compute-sanitizer (its kernels are in the cache)
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ "$REHEARSAL" = 1 ] || [ -z "$SAN" ]; then
  why=$([ "$REHEARSAL" = 1 ] && echo "rehearsal (no GPU)" || echo "compute-sanitizer is not on this machine")
  NOTE="$why: the workload ran without the sanitizer" step memcheck 60 "$PY" -m benchmarks.gpu_headline memcheck \
    >"$OUT/memcheck.txt" 2>&1
  echo "memcheck: NOT RUN under compute-sanitizer: $why" >>"$OUT/memcheck.txt"
else
  # without torch's caching allocator each tensor is its own allocation: an access past a tensor's
  # end inside a cached block would otherwise pass unseen
  NOTE="see memcheck.txt" step memcheck "${PDIFF_HEADLINE_MEMCHECK_S:-40}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SAN" --tool memcheck \
    --report-api-errors no --print-limit 20 --error-exitcode 99 "$PY" -m benchmarks.gpu_headline memcheck \
    >"$SCRATCH/memcheck.log" 2>&1
  { echo "compute-sanitizer --tool memcheck, rc $LAST_RC (99: memory errors found)"; head -120 "$SCRATCH/memcheck.log"
    echo "--- last lines"; tail -15 "$SCRATCH/memcheck.log"; } >"$OUT/memcheck.txt"
  record memcheck "$LAST_RC" "" "" "$(grep -m1 -E 'ERROR SUMMARY|memcheck workload' "$SCRATCH/memcheck.log" | cut -c1-150)"
fi

# tests: the GPU tests with what time is left (gpu.sh's phase: SIGINT so pytest still reports)
if [ "$REHEARSAL" = 1 ]; then
  TESTS=${PDIFF_HEADLINE_TESTS-tests/test_population.py}
  WORKERS=${PDIFF_HEADLINE_TEST_WORKERS:-0}
else
  TESTS=${PDIFF_HEADLINE_TESTS-tests/test_sample.py tests/test_population.py tests/kernels tests/ops}
  WORKERS=${PDIFF_HEADLINE_TEST_WORKERS:-12}
fi
if [ -z "$TESTS" ]; then
  record tests skip 0 0 "PDIFF_HEADLINE_TESTS is empty"
else
  STEP_SIGNAL=INT NOTE="$TESTS" step tests $(( DEADLINE - $(now) - 5 )) env TESTS="$TESTS" ALL="$SCRATCH" PY="$PY" \
    REHEARSAL="$REHEARSAL" PDIFF_GPU_TEST_WORKERS="$WORKERS" bash benchmarks/gpu.sh __phase tests \
    >"$SCRATCH/tests.log" 2>&1
  { grep -E "^(FAILED|ERROR)" "$SCRATCH/tests.log" | head -100; echo "--- last lines"; tail -25 "$SCRATCH/tests.log"; } \
    >"$OUT/tests.txt"
  record tests "$LAST_RC" "" "" "$(grep -E "passed|failed|error" "$SCRATCH/tests.log" | tail -1 | cut -c1-150)"
fi

STEP=done
record done 0 "$(( $(now) - START ))" "${PDIFF_HEADLINE_DEADLINE_S:-300}" "whole command"
ls "$OUT" | wc -l | xargs echo "files in OUT:"
cleanup
table
