#!/usr/bin/env bash
# Run the whole benchmark (python -m fastneurons.bench) from a source checkout and keep its JSON.
# Usage: benchmarks/run_all.sh [--quick] [--device cuda] [any other flag of python -m fastneurons.bench]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${BENCH_JSON:-$here/benchmarks/bench-results-$(date +%Y%m%d-%H%M%S).json}"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m fastneurons.bench --json "$out" "$@"
