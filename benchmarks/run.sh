#!/usr/bin/env bash
# Regenerate every benchmark figure of pdiff_fast in benchmarks/results/:
#   <dev>.json  pytest-benchmark data of the whole suite      <dev>.md  its ratio tables (report.py)
#   scaling_<dev>.{json,md}, scaling_N_<dev>.png, scaling_D_<dev>.png  (scaling.py)
#   world_size_<dev>.{json,md}  throughput against torchrun processes (world_size.py)
# where <dev> is cpu or cuda.
#
#   bash benchmarks/run.sh            # default sizes: a few minutes on a 2-core CPU
#   bash benchmarks/run.sh --full     # full sizes: every N, 1000 DDPM steps (for a GPU; hours on a CPU)
#   PYTHON=.venv/bin/python bash benchmarks/run.sh -k sample   # other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=benchmarks/results
FULL=()
PYTEST_ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--full" ]; then FULL=(--full); else PYTEST_ARGS+=("$arg"); fi
done
DEV=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
mkdir -p "$OUT"
start=$(date +%s)
"$PY" -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-json="$OUT/$DEV.json" \
  --benchmark-columns=min,median,rounds ${FULL[@]+"${FULL[@]}"} ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}
echo "pytest benchmarks/: $(( $(date +%s) - start )) s"
"$PY" benchmarks/report.py "$OUT/$DEV.json" -o "$OUT/$DEV.md"
echo "wrote $OUT/$DEV.md"
"$PY" -m benchmarks.scaling --out "$OUT" ${FULL[@]+"${FULL[@]}"}
"$PY" -m benchmarks.world_size --out "$OUT"
echo "run.sh: $(( $(date +%s) - start )) s in all"
