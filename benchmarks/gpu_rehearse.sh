#!/usr/bin/env bash
# Rehearse benchmarks/gpu.sh on this CPU machine, as the GPU machine will run it:
#   1. a throwaway venv shaped like the GPU image's python: torch (2.13.0, the CPU wheel here),
#      triton, pybind11, ninja, pytest, setuptools, wheel, and scipy (which .gpu_wheels leaves to
#      the image; installed --no-deps so numpy must come from the carried wheels); nothing else;
#   2. the carried wheels for this python (gpu_prepare.sh, PDIFF_GPU_PY = this python's version);
#   3. a copy of the working tree as the run tool sends it (tracked + untracked-not-ignored files,
#      no .git) in $TMPDIR/pdiff_fast_gpu_rehearsal/tree, with the wheel folder in it as .gpu_wheels;
#   4. PDIFF_GPU_REHEARSAL=1 bash benchmarks/gpu.sh in that copy: offline install (--no-index),
#      CPU build, a subset of the tests, the quick benchmarks, a small scaling run, CMake + ctest.
#
#   bash benchmarks/gpu_rehearse.sh            # -> .gpu_rehearsal/out/ (summary.md, all.tar.gz, ...)
# Set PDIFF_GPU_REHEARSAL_FRESH=1 to remake the venv. Other PDIFF_GPU_* knobs pass through to gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
R=$ROOT/.gpu_rehearsal
PY=${PYTHON:-python3}
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
WHEELS=$ROOT/.gpu_wheels_cp${PYVER/./}
mkdir -p "$R"
t0=$(date +%s)
if [ "${PDIFF_GPU_REHEARSAL_FRESH:-0}" = 1 ]; then rm -rf "$R/venv"; fi
if [ ! -x "$R/venv/bin/python" ]; then
  "$PY" -m venv "$R/venv"
  "$R/venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  "$R/venv/bin/python" -m pip install -q torch==2.13.0 triton pybind11 ninja pytest
  "$R/venv/bin/python" -m pip install -q --no-deps scipy
  "$R/venv/bin/python" -m pip freeze --all | cut -d= -f1 | sort >"$R/venv.base.txt"
fi
# a venv kept from an earlier rehearsal: remove what that rehearsal installed (gpu.sh must install it)
extra=$(comm -13 "$R/venv.base.txt" <("$R/venv/bin/python" -m pip freeze --all | cut -d= -f1 | sort) | grep -v '^-e\|^pdiff\|^#' || true)
if [ -n "$extra" ]; then "$R/venv/bin/python" -m pip uninstall -q -y $extra; fi
echo "rehearse: venv ready in $(( $(date +%s) - t0 )) s"
[ -d "$WHEELS" ] || PDIFF_GPU_PY=$PYVER PDIFF_GPU_WHEELS=$WHEELS bash benchmarks/gpu_prepare.sh
# the copy lies outside this checkout, so no .git is found above it (as on the GPU machine)
TREE=${TMPDIR:-/tmp}/pdiff_fast_gpu_rehearsal/tree
rm -rf "$TREE" "$R/out"
mkdir -p "$TREE"
git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents -P {} "$TREE/" 2>/dev/null || true
cp -r "$WHEELS" "$TREE/.gpu_wheels"
echo "rehearse: tree copied to $TREE ($(du -sm "$TREE" | cut -f1) MiB with the wheels)"
cd "$TREE"
PDIFF_GPU_REHEARSAL=1 PYTHON="$R/venv/bin/python" bash benchmarks/gpu.sh "$R/out"
