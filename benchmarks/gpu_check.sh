#!/usr/bin/env bash
# The GPU check of issue 15 from a fresh checkout: uses the installed fastneurons if it is this checkout,
# else builds fastneurons._C in place if it is missing (or lacks CUDA on a GPU machine); then runs
# benchmarks/gpu_check.py, which writes OUT/gpu_check.md (one markdown table), OUT/gpu_check.json and
# OUT/offload_trace.json.gz.
# Usage: bash benchmarks/gpu_check.sh OUT [--quick] [--skip SECTION ...] [--gpu-memory 1G]
# Expects: python3 (or $PYTHON) with torch (a CUDA build on a GPU machine), transformers, h5py, numba, numpy,
# pytest, scikit-build-core and pybind11 installed, and nvcc (the CUDA major of torch) for the build.
# Without a GPU it runs the CPU parts and lists what it skipped; with FASTNEURONS_REQUIRE_CUDA=1 it then
# exits non-zero. FASTNEURONS_REBUILD=1 forces the build.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT [--quick] [--skip SECTION ...]" >&2
  exit 2
fi
out="$1"; shift
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$here"

# A usable _C: one that imports, with CUDA whenever torch sees a GPU.
usable() {
  "$python" - <<'PY' 2>/dev/null
import torch
from fastneurons import _C
assert "cuda" in _C.info()["backends"] or not torch.cuda.is_available()
PY
}

# The installed fastneurons is used as it is when its Python files are the checkout's (CI installs the
# checkout with `pip install .`); otherwise the checkout's src/ runs, with _C built in place if needed.
installed_matches_checkout() {
  local where
  where="$(cd / && "$python" -c 'import fastneurons, os; print(os.path.dirname(fastneurons.__file__))' 2>/dev/null)" \
    || return 1
  [ "$where" != "$here/src/fastneurons" ] || return 1
  diff -rq -x '__pycache__' -x '*.so' -x '*.pyc' "$here/src/fastneurons" "$where" >/dev/null 2>&1
}

if [ "${FASTNEURONS_REBUILD:-0}" != "1" ] && ! PYTHONPATH="$here/src" usable && installed_matches_checkout \
    && (cd / && usable); then
  echo "== using the installed fastneurons (its Python files are the checkout's)"
else
  export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
  if [ "${FASTNEURONS_REBUILD:-0}" = "1" ] || ! usable; then
    if ! "$python" -c 'import scikit_build_core, pybind11' 2>/dev/null; then
      echo "cannot build fastneurons._C: scikit-build-core and pybind11 are not installed in $python" \
           "(pip install scikit-build-core pybind11, or pip install . first)" >&2
      exit 2
    fi
    echo "== building fastneurons._C in place (pip wheel --no-build-isolation; about 1-3 min)"
    wheels="$(mktemp -d)"
    "$python" -m pip wheel --no-build-isolation --no-deps -q -w "$wheels" . 2>&1 | tee "$out/build.log" | tail -20
    "$python" - "$wheels" "$here/src/fastneurons" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/fastneurons-*.whl")[0]
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith("fastneurons/_C") and name.endswith(".so"):
            open(f"{sys.argv[2]}/{name.split('/')[-1]}", "wb").write(archive.read(name))
PY
    rm -rf "$wheels"
  fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
"$python" -m fastneurons.cli info
exec "$python" "$here/benchmarks/gpu_check.py" "$out" "$@"
