#!/usr/bin/env bash
# Prepare, on a machine WITH network (the CPU dev machine), what benchmarks/gpu.sh needs on the
# GPU machine, which has none: wheels of the Python packages its image may lack, and the
# generated MNIST-1D data. Everything lands in one ignored folder that the run tool carries.
#
#   bash benchmarks/gpu_prepare.sh                 # -> .gpu_wheels/ (CPython 3.12, manylinux x86_64)
#   PDIFF_GPU_PY=3.11 PDIFF_GPU_WHEELS=.gpu_wheels_cp311 bash benchmarks/gpu_prepare.sh
#                                                  # the same set for a CPU rehearsal with python 3.11
#
# Never downloads torch, triton or nvidia-* (the GPU image has them; they are GBs). The folder is
# kept under PDIFF_GPU_BUDGET_MIB (default 60, the run tool sends 64 MiB in all): past that,
# wheels are dropped in the order of DROP_ORDER, packages the GPU image holds (see
# /work/.library/device/KINDS.md); MANIFEST.txt lists what is there and what was dropped.
# Also writes:
#   <folder>/cache/mnist1d_n{5000,500}_s42.safetensors  (pdiff_fast.data.mnist1d's cache files;
#       gpu.sh points PDIFF_FAST_CACHE there, so `pdiff-fast run` there need not generate them)
#   <folder>/commit.txt    the git commit prepared from (the GPU machine gets no .git)
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PDIFF_GPU_PY:-3.12}
DIR=${PDIFF_GPU_WHEELS:-.gpu_wheels}
BUDGET_MIB=${PDIFF_GPU_BUDGET_MIB:-60}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
ABI=cp${PYVER/./}
# what the project needs at run time and in its tests (setup.py install_requires + test extras)
PACKAGES=(mnist1d hypothesis safetensors tqdm matplotlib scikit-learn scipy joblib threadpoolctl
          pytest-benchmark numpy)
# dropped first when over budget: the largest that the GPU image already holds
DROP_ORDER=(scipy numpy pillow fonttools)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
start=$(date +%s)
"$PY" -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$ABI" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 -d "$stage" "${PACKAGES[@]}" 2>&1 | grep -v "is ignored" || true
# never carry torch, triton or CUDA libraries, even if something pulled them in
rm -f "$stage"/torch-*.whl "$stage"/triton-*.whl "$stage"/nvidia_*.whl "$stage"/nvidia-*.whl
for p in "${PACKAGES[@]}"; do
  norm=${p//-/_}
  ls "$stage" | grep -qi "^${norm}-" || { echo "gpu_prepare: no wheel for $p" >&2; exit 1; }
done

mib() { du -sm "$1" | cut -f1; }
dropped=()
for p in "${DROP_ORDER[@]}"; do
  [ "$(mib "$stage")" -le "$BUDGET_MIB" ] && break
  rm -f "$stage/${p//-/_}"-*.whl
  dropped+=("$p")
done
if [ "$(mib "$stage")" -gt "$BUDGET_MIB" ]; then
  echo "gpu_prepare: $(mib "$stage") MiB of wheels is over the $BUDGET_MIB MiB budget" >&2
  exit 1
fi

rm -rf "$DIR"
mkdir -p "$DIR/cache"
mv "$stage"/*.whl "$DIR/"
# MNIST-1D as pdiff_fast.data.mnist1d caches it (the default 5000 samples, and 500 as tests use)
PDIFF_FAST_CACHE="$DIR/cache" "$PY" -c "
from pdiff_fast import data
for n in (5000, 500):
    data.mnist1d(num_samples=n)
"
git rev-parse HEAD >"$DIR/commit.txt" 2>/dev/null || echo unknown >"$DIR/commit.txt"
{
  echo "# wheels for CPython $PYVER manylinux x86_64, made by benchmarks/gpu_prepare.sh on $(date -u +%FT%TZ)"
  echo "# from commit $(cat "$DIR/commit.txt"); requested: ${PACKAGES[*]}"
  echo "# dropped to stay under $BUDGET_MIB MiB (the GPU image holds them): ${dropped[*]:-none}"
  (cd "$DIR" && ls -s --block-size=K -- *.whl cache/*)
} >"$DIR/MANIFEST.txt"
echo "gpu_prepare: $DIR holds $(ls "$DIR"/*.whl | wc -l) wheels, $(mib "$DIR") MiB" \
  "(dropped: ${dropped[*]:-none}) in $(( $(date +%s) - start )) s"
