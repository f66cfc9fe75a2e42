#!/usr/bin/env bash
# The one prepared command for a GPU window (an H100 with python 3.12, torch 2.11+cu130,
# triton 3.6, no network; 10 minutes per command). Needs the folder that
# benchmarks/gpu_prepare.sh makes (.gpu_wheels/), carried along. See benchmarks/README.md.
#
#   bash benchmarks/gpu.sh OUT_DIR                              # on the GPU machine
#   PDIFF_GPU_REHEARSAL=1 PYTHON=venv/bin/python bash benchmarks/gpu.sh OUT_DIR   # CPU rehearsal
#
# Phases, each time-boxed (SIGINT first, so pytest still writes its JSON / junit XML), each run
# whatever the previous ones returned; rc and seconds of each land in OUT_DIR/summary.md:
#   env      nvidia-smi, python / torch / triton / nvcc versions, commit, pip list -> env.txt
#   deps     pip install --no-index --find-links .gpu_wheels of what is missing (never torch/triton)
#   build    TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e .
#            against the machine's own torch; checks pdiff_fast._C.has_cuda()
#   tests    pytest tests/ (junit XML; tests.txt holds the failures and the closing lines)
#   bench    pytest benchmarks/ --full, one file at a time (a time-out loses one file, not all),
#            first without the torch.compile peer, then the compile peer with the time left;
#            merged into bench.json, report.py -> bench.md
#   profile  benchmarks/profile_gpu.py: torch.profiler top kernels of sampling, AE training and
#            population evaluation -> profile.md
#   scaling  benchmarks/scaling.py --steps 100 (PDIFF_GPU_SCALING_STEPS; PDIFF_GPU_SCALING_ARGS=--full
#            for the larger N and D where a window has the time)
#   cmake    the CMake build WITH_CUDA and ctest (the C++ unit tests), with what time is left
# OUT_DIR gets at most 8 files (the run tool returns 8): summary.md env.txt tests.txt bench.md
# bench.json profile.md scaling.md all.tar.gz (every log, junit.xml, per-file JSON, PNGs).
#
# Knobs: PYTHON (python3), PDIFF_GPU_WHEELS (.gpu_wheels), PDIFF_GPU_DEADLINE_S (540: the whole
# script, packing included), PDIFF_GPU_TESTS (tests/), PDIFF_GPU_TESTS_S (170: the tests' time box),
# PDIFF_GPU_TEST_WORKERS (4 with
# pytest-xdist, 0: none), PDIFF_GPU_BENCH_ARGS (extra pytest args), PDIFF_GPU_SCALING_STEPS,
# PDIFF_GPU_SKIP ("tests cmake": phases to leave out, e.g. in a second window for benchmarks),
# PDIFF_GPU_BENCH_FILES ("test_sample kernels/test_ddpm_step": which benchmark files, default all;
# with PDIFF_GPU_BENCH_ARGS="--n 1000 --configs resnet18 --ddpm-steps 100" for a short window).
# Rehearsal (PDIFF_GPU_REHEARSAL=1, a CPU machine): the same steps with a CPU build, a subset of
# the tests, the -m quick benchmarks and a small scaling run; a longer default deadline.
set -uo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."

now() { date +%s; }

# pytest in a python that turns SIGINT and SIGTERM into KeyboardInterrupt, so a time-out still
# writes the JSON / junit XML of the cases done: a shell that runs us in the background may
# have started us with SIGINT ignored, which python would otherwise keep
PYTEST_BOOT='import signal, sys
def _stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, _stop)
signal.signal(signal.SIGTERM, _stop)
import pytest
sys.exit(pytest.main(sys.argv[1:]))'
run_pytest() { "$PY" -c "$PYTEST_BOOT" "$@"; }

# ---- the phases (each runs as `bash gpu.sh __phase NAME`, under timeout) ----------------------

phase_env() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -a)"
    echo "cpus: $(nproc)"
    if git rev-parse HEAD >/dev/null 2>&1; then
      echo "commit: $(git rev-parse HEAD) ($(git status --porcelain | wc -l) changed paths)"
    else
      echo "commit: no .git here; gpu_prepare.sh ran at $(cat "$WHEELS/commit.txt" 2>/dev/null || echo unknown)"
    fi
    echo "tree sha256 (setup.py CMakeLists.txt csrc kernels pdiff_fast tests benchmarks): $(
      find setup.py CMakeLists.txt csrc kernels pdiff_fast tests benchmarks -type f \
        ! -name '*.pyc' ! -name '*.so' ! -path '*/results/*' 2>/dev/null | LC_ALL=C sort |
        xargs sha256sum | sha256sum | cut -c1-16)"
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    echo "--- nvcc"
    nvcc --version 2>&1 || echo "(no nvcc on PATH)"
    echo "--- python"
    "$PY" - <<'EOF'
import importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          round(p.total_memory / 2**30, 1), "GiB")
for name in ("triton", "numpy", "scipy", "scikit-learn", "matplotlib", "pytest", "pytest-benchmark",
             "pytest-xdist", "hypothesis", "safetensors", "mnist1d", "setuptools", "ninja", "pybind11"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "-")
EOF
    echo "--- pip list"
    "$PY" -m pip list 2>/dev/null
  } >"$OUT/env.txt" 2>&1
  grep -E "^(python|torch|triton|device|commit|cpus) " "$OUT/env.txt" | head -8
}

NEEDED=(numpy scipy scikit-learn joblib threadpoolctl matplotlib tqdm safetensors mnist1d hypothesis
        pytest pytest-benchmark)

phase_deps() {
  # pip's own config and PIP_* variables of this machine stay out: only the carried wheels count
  for v in $(compgen -e | grep '^PIP_'); do unset "$v"; done
  export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
  local missing
  missing=$("$PY" - "${NEEDED[@]}" <<'EOF'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(name)
EOF
)
  if [ -z "$missing" ]; then echo "deps: nothing missing"; return 0; fi
  echo "deps: missing: $(echo $missing)"
  # torch and triton pinned at what is installed: pip may not touch them (and with --no-index
  # and no torch wheel carried, it could not)
  local cons=$ALL/constraints.txt
  "$PY" - >"$cons" <<'EOF'
import importlib.metadata as md
for name in ("torch", "triton"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
  local pip=("$PY" -m pip install --no-index --find-links "$WHEELS" --no-cache-dir -c "$cons")
  if "${pip[@]}" $missing; then echo "deps: installed $(echo $missing)"; return 0; fi
  echo "deps: one install of all failed; one at a time:"
  local rc=0 p
  for p in $missing; do
    if "${pip[@]}" "$p" >/dev/null 2>&1; then echo "  $p: installed"; else echo "  $p: FAILED"; rc=1; fi
  done
  return $rc
}

phase_build() {
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  if [ "$REHEARSAL" = 1 ]; then
    unset FORCE_CUDA
  else
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1
  fi
  [ "$REHEARSAL" = 1 ] || rm -f pdiff_fast/_C*.so
  # The GPU image sets CXX=/opt/gcc/bin/g++, a wrapper around g++ 13.3: with it, every error the
  # extension raises with a number in its message (TORCH_CHECK) killed python with SIGSEGV (CPU and
  # CUDA builds alike; measured on the H100 image, 2026-11-23). /usr/bin/g++ (the same gcc 13.3,
  # unwrapped) raises them as RuntimeError. PDIFF_GPU_CXX picks another compiler.
  local cxx=${PDIFF_GPU_CXX:-$([ -x /usr/bin/g++ ] && echo /usr/bin/g++ || echo "${CXX:-c++}")}
  export CXX=$cxx CC=${PDIFF_GPU_CC:-$([ -x /usr/bin/gcc ] && echo /usr/bin/gcc || echo "${CC:-cc}")}
  echo "build: CXX=$CXX CC=$CC"
  PIP_CONFIG_FILE=/dev/null "$PY" -m pip install --no-index --no-build-isolation --no-deps -v -e . \
    >"$ALL/build_pip.log" 2>&1
  local rc=$?
  grep -E "pdiff_fast: building|error|Error" "$ALL/build_pip.log" | head -20
  [ $rc -eq 0 ] || { echo "build: pip install -e . failed ($rc)"; tail -30 "$ALL/build_pip.log"; return $rc; }
  "$PY" -c "
import torch, pdiff_fast._C as C
print('pdiff_fast._C', C.__file__, 'has_cuda', C.has_cuda())
raise SystemExit(0 if C.has_cuda() or torch.version.cuda is None else 3)" || return $?
  # an error raised in C++ must reach python as RuntimeError, not kill it (see CXX above)
  "$PY" -c "
import torch, pdiff_fast._C
try:  # TORCH_CHECK with numbers in its message: the case that crashed
    torch.ops.pdiff_fast.iou_matrix(torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(2, 5, dtype=torch.uint8))
except RuntimeError as e:
    print('build: C++ errors arrive as RuntimeError:', str(e).splitlines()[0])
" || { echo "build: a C++ error killed python (rc $?): rebuild with another compiler (PDIFF_GPU_CXX)"; return 4; }
}

phase_tests() {
  local args=(-q -rfEs -p no:cacheprovider --junitxml="$ALL/junit.xml" -o junit_family=xunit2)
  local workers=${PDIFF_GPU_TEST_WORKERS:-$([ "$REHEARSAL" = 1 ] && echo 0 || echo 4)}
  if [ "$workers" -gt 0 ] && "$PY" -c "import xdist" 2>/dev/null; then args+=(-n "$workers"); fi
  # a package that could not be installed: leave out the test files that need it, and say so
  local mod pat f
  for mod in sklearn:"sklearn|digits" mnist1d:"mnist1d"; do
    pat=${mod#*:}
    if ! "$PY" -c "import ${mod%%:*}" 2>/dev/null; then
      for f in $(grep -rlE "$pat" tests --include='*.py'); do
        echo "tests: ${mod%%:*} is missing: leaving out $f"
        args+=(--ignore="$f")
      done
    fi
  done
  # shellcheck disable=SC2086
  run_pytest $TESTS "${args[@]}"
}

phase_bench() {
  # main pass: one pytest process per file, so each stage gets its share of the time and a
  # time-out cuts one file short, not all; then one process for the torch.compile peer of every
  # file with the time left (compiling is slow, the other peers come first)
  local deadline=$1 full=() sel=(-m "not quick") files=() f rc=0 r left share t0 name w
  [ "$REHEARSAL" = 1 ] && sel=(-m quick) || full=(--full)
  if [ -n "${PDIFF_GPU_BENCH_FILES:-}" ]; then
    for name in $PDIFF_GPU_BENCH_FILES; do files+=("benchmarks/$name.py"); done
  else
    files=($(ls benchmarks/test_*.py benchmarks/ops/test_*.py benchmarks/kernels/test_*.py))
  fi
  local weights="test_sample:4 test_autoencoder:4 test_denoiser:2 test_population:2 test_flatten_params:1"
  weight() { local v; v=$(tr ' ' '\n' <<<"$weights" | grep "^$1:" | cut -d: -f2); echo "${v:-1}"; }
  local left_w=0
  for f in "${files[@]}"; do left_w=$(( left_w + $(weight "$(basename "$f" .py)") )); done
  local compile_s=$(( (deadline - $(now)) * 20 / 100 ))  # kept for the compile pass
  bench_one() {  # TAG TIMEOUT FILES... -- PYTEST-ARGS...
    local tag=$1 t=$2
    shift 2
    t0=$(now)
    timeout -s INT -k 15 "$t" "$PY" -c "$PYTEST_BOOT" "$@" -q -p no:cacheprovider ${full[@]+"${full[@]}"} \
      --benchmark-json="$ALL/bench_$tag.json" --benchmark-columns=min,median,rounds $BENCH_ARGS \
      >"$ALL/bench_$tag.log" 2>&1
    r=$?
    [ $r -eq 5 ] && r=0  # no case selected
    echo "bench: $tag: rc $r in $(( $(now) - t0 )) s of $t s; $(grep -v '^\s*$' "$ALL/bench_$tag.log" | tail -1)"
    [ $r -eq 0 ] || rc=$r
  }
  for f in "${files[@]}"; do
    name=$(basename "$f" .py)
    w=$(weight "$name")
    left=$(( deadline - $(now) - compile_s ))
    share=$(( left * w / left_w ))
    left_w=$(( left_w - w ))
    if [ "$share" -lt 10 ]; then echo "bench: main_$name: no time left"; rc=124; continue; fi
    bench_one "main_$name" "$share" "$f" "${sel[@]}" -k "not compile"
  done
  share=$(( deadline - $(now) ))
  if [ "$REHEARSAL" = 1 ]; then
    echo "bench: compile: the quick cases have no torch.compile peer; collection only"
    "$PY" -m pytest benchmarks/ -q -p no:cacheprovider -k compile --collect-only >"$ALL/bench_compile.log" 2>&1
    echo "bench: compile: $(tail -1 "$ALL/bench_compile.log")"
  elif [ "$share" -ge 10 ]; then
    bench_one compile "$share" "${files[@]}" "${sel[@]}" -k compile
  else
    echo "bench: compile: no time left"
  fi
  return $rc
}

phase_report() {
  "$PY" - "$OUT/bench.json" "$ALL"/bench_*.json <<'EOF'
import json, sys
out, parts = sys.argv[1], sys.argv[2:]
merged = None
for path in parts:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        print("report: skipping", path, e)
        continue
    if merged is None:
        merged = d
        merged.setdefault("pdiff_fast", {}).setdefault("skipped", [])
        continue
    merged["benchmarks"] += d.get("benchmarks", [])
    extra = d.get("pdiff_fast", {})
    if extra.get("hardware") and not merged["pdiff_fast"].get("hardware"):
        merged["pdiff_fast"]["hardware"] = extra["hardware"]
    merged["pdiff_fast"]["skipped"] += extra.get("skipped", [])
if merged is None:
    raise SystemExit("report: no benchmark JSON to merge")
with open(out, "w") as f:
    json.dump(merged, f, indent=1)
print(f"report: {len(merged['benchmarks'])} benchmarks from {len(parts)} files -> {out}")
EOF
  [ -s "$OUT/bench.json" ] || return 1
  "$PY" benchmarks/report.py "$OUT/bench.json" -o "$OUT/bench.md"
}

phase_profile() {
  if [ "$REHEARSAL" = 1 ]; then
    "$PY" -m benchmarks.profile_gpu --small --out "$OUT/profile.md" || return $?
  else
    "$PY" -m benchmarks.profile_gpu --out "$OUT/profile.md" || return $?
  fi
}

phase_scaling() {
  local args=(--out "$ALL/scaling")
  if [ "$REHEARSAL" = 1 ]; then
    args+=(--steps "${PDIFF_GPU_SCALING_STEPS:-1}" --budget 0.2)
  else
    # the default N and D (up to N = 200, D = 127k), 100 DDPM steps: about a minute; scaling.py
    # writes nothing if cut short, so --full (N = 1000, D = 500k) only where a window has time
    args+=(--steps "${PDIFF_GPU_SCALING_STEPS:-100}" --budget 1 ${PDIFF_GPU_SCALING_ARGS:-})
  fi
  "$PY" -m benchmarks.scaling "${args[@]}" || return $?
  cp "$ALL"/scaling/scaling_*.md "$OUT/scaling.md"
}

phase_cmake() {
  local prefix cuda=OFF
  prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)') || return 1
  [ "$REHEARSAL" = 1 ] || cuda=ON
  cmake -S . -B "$ALL/cmake_build" -DCMAKE_PREFIX_PATH="$prefix" -DWITH_CUDA=$cuda \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DPython3_EXECUTABLE="$(command -v "$PY")" >"$ALL/cmake_configure.log" 2>&1 ||
    { tail -30 "$ALL/cmake_configure.log"; return 1; }
  cmake --build "$ALL/cmake_build" -j"$(nproc)" >"$ALL/cmake_build.log" 2>&1 || { tail -30 "$ALL/cmake_build.log"; return 1; }
  ctest --test-dir "$ALL/cmake_build" --output-on-failure
}

if [ "${1:-}" = __phase ]; then
  shift
  "phase_$1" "${@:2}"
  exit $?
fi

# ---- the driver -----------------------------------------------------------------------------

OUT=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT ALL="$OUT/all" SELF
mkdir -p "$ALL"
export REHEARSAL=${PDIFF_GPU_REHEARSAL:-0}
export PY=${PYTHON:-python3}
export WHEELS=${PDIFF_GPU_WHEELS:-.gpu_wheels}
WHEELS=$(cd "$WHEELS" 2>/dev/null && pwd || echo "$WHEELS")
export PDIFF_FAST_CACHE=${PDIFF_FAST_CACHE:-$WHEELS/cache}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export BENCH_ARGS=${PDIFF_GPU_BENCH_ARGS:-}
if [ "$REHEARSAL" = 1 ]; then
  DEADLINE_S=${PDIFF_GPU_DEADLINE_S:-2400}  # 2 cores: the build alone takes 4-5 minutes
  export TESTS=${PDIFF_GPU_TESTS:-tests/test_build.py tests/ops tests/test_data.py tests/test_io.py tests/kernels/test_q_sample.py}
else
  DEADLINE_S=${PDIFF_GPU_DEADLINE_S:-540}
  export TESTS=${PDIFF_GPU_TESTS:-tests/}
fi
if [ "$REHEARSAL" = 1 ] && [ -e .git ] && [ "${PDIFF_GPU_REHEARSE_IN_PLACE:-0}" != 1 ]; then
  echo "gpu.sh: rehearse in a copy of the tree (benchmarks/gpu_rehearse.sh does), not in the checkout:" \
    "the build would replace its pdiff_fast/_C*.so" >&2
  exit 2
fi
START=$(now)
DEADLINE=$(( START + DEADLINE_S - 15 ))  # 15 s to write the summary and pack
ROWS=()

# run_phase NAME BUDGET_S RESERVE_S [args]: at most BUDGET_S, and never into the RESERVE_S
# seconds kept for the phases after it
run_phase() {
  local name=$1 budget=$2 reserve=$3 t0 rc t
  shift 3
  if [[ " ${PDIFF_GPU_SKIP:-} " == *" $name "* ]]; then
    ROWS+=("| $name | skipped | 0 | $budget | PDIFF_GPU_SKIP |")
    return
  fi
  t=$(( DEADLINE - $(now) - reserve ))
  [ "$t" -gt "$budget" ] && t=$budget
  t0=$(now)
  if [ "$t" -lt 5 ]; then
    ROWS+=("| $name | skipped | 0 | $budget | no time left |")
    echo "== $name: skipped (no time left)"
    return
  fi
  echo "== $name (at most $t s)"
  timeout -s INT -k 15 "$t" bash "$SELF" __phase "$name" "$@" 2>&1 | tee "$ALL/$name.log"
  rc=${PIPESTATUS[0]}
  local note
  note=$(grep -vE '^\s*$' "$ALL/$name.log" | tail -1 | tr '|' '/' | cut -c1-160)
  [ "$rc" -eq 124 ] && note="TIMED OUT after $t s; $note"
  ROWS+=("| $name | $rc | $(( $(now) - t0 )) | $t | $note |")
}

echo "gpu.sh: OUT=$OUT rehearsal=$REHEARSAL python=$PY wheels=$WHEELS deadline=${DEADLINE_S}s"
run_phase env 30 400
run_phase deps 90 380
if [ "$REHEARSAL" = 1 ]; then run_phase build 900 260; else run_phase build 240 260; fi
if [ "$REHEARSAL" = 1 ]; then run_phase tests 600 200; else run_phase tests "${PDIFF_GPU_TESTS_S:-170}" 200; fi
BENCH_START=$(now)
export BENCH_START
BENCH_END=$(( DEADLINE - 25 ))  # report 15 s, scaling 75 s (unless skipped), cmake what is left after them
BENCH_RESERVE=25
case " ${PDIFF_GPU_SKIP:-} " in *" scaling "*) ;; *) BENCH_END=$(( BENCH_END - 75 )); BENCH_RESERVE=$(( BENCH_RESERVE + 75 )) ;; esac
case " ${PDIFF_GPU_SKIP:-} " in *" profile "*) ;; *) BENCH_END=$(( BENCH_END - 60 )); BENCH_RESERVE=$(( BENCH_RESERVE + 60 )) ;; esac
run_phase bench 100000 "$BENCH_RESERVE" "$(( BENCH_END - 20 ))"
run_phase report 20 135
run_phase profile 60 75
run_phase scaling 75 0
run_phase cmake 300 0

# ---- summary and packing --------------------------------------------------------------------
{
  echo "# gpu.sh $([ "$REHEARSAL" = 1 ] && echo "REHEARSAL (CPU)" || echo "GPU run")"
  echo
  grep -E "^(date|commit|python|torch|triton|device|cpus) " "$OUT/env.txt" 2>/dev/null | sed 's/^/    /'
  echo
  echo "| phase | rc | seconds | budget | last line |"
  echo "|---|---:|---:|---:|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "total: $(( $(now) - START )) s"
  echo
  echo "build: $(grep -h "pdiff_fast: building\|has_cuda" "$ALL/build.log" 2>/dev/null | sort -u | tr '\n' ' ')"
  echo "tests: $(grep -E "passed|failed|error" "$ALL/tests.log" 2>/dev/null | tail -1)"
  echo "bench: $(grep -h "^report:" "$ALL/report.log" 2>/dev/null | tail -1)"
  echo
  echo "all.tar.gz holds every log, junit.xml, the per-file benchmark JSON, scaling JSON / PNGs and the CMake logs."
} >"$OUT/summary.md"
{
  grep -E "^(FAILED|ERROR|SKIPPED)" "$ALL/tests.log" 2>/dev/null | head -200
  echo "--- last lines"
  tail -40 "$ALL/tests.log" 2>/dev/null
} >"$OUT/tests.txt"
rm -rf "$ALL/cmake_build"/CMakeFiles "$ALL/cmake_build"/*.so "$ALL/cmake_build"/test_* 2>/dev/null
tar czf "$OUT/all.tar.gz" -C "$OUT" all && rm -rf "$ALL"
cat "$OUT/summary.md"
ls -la "$OUT"
