"""SmolLM2-135M at t = 1 (gate_proj(x) > 1.0, layers 0-14, k = 1, 2, 3 tables), the same corpus recorded with
`--ngrams exact` and `--ngrams bounded`: do the analyses agree? (issue 11, docs/bounded-ngrams.md)

    PYTHONPATH=src python benchmarks/smollm2_bounded_vs_exact.py OUT_DIR [--tokens 100k] [--threads 1]
    PYTHONPATH=src python benchmarks/smollm2_bounded_vs_exact.py OUT_DIR --definition spec --orders 1 \
        --unigram-capacity 4096 8192       # t = 0, token tables: what a larger k = 1 capacity certifies

Prints, per order, the detectors, G(n), detected n-gram sets, Fig. 4 counts and C_k(n) of the certified
neurons of both stores, whether they are identical, the suppression of the token detectors, how many neurons
the bounded store certifies, its pass-2 work and both stores' time and size; writes OUT_DIR/agreement.json.
With --unigram-capacity, one more bounded store per capacity, each compared with the exact one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import numpy as np

from fastneurons.analysis.pipeline import AnalysisSettings, analyze_counts
from fastneurons.config import RecordConfig
from fastneurons.models.architectures import ModelWeights
from fastneurons.models.loading import load_model
from fastneurons.recording import runner
from fastneurons.store import open_counts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_run import MODELS, write_corpus  # noqa: E402  (the README runs' corpus and settings)


DEFINITIONS = {"strict": "strict", "spec": "bounded"}  # --definition -> smollm2_run's store of that neuron definition


def record(out_dir: Path, name: str, args, **settings) -> dict:
    """One store of the chosen SmolLM2 definition with ``settings`` (ngrams=...); its time and size."""
    _, threshold, layers, orders, _ = MODELS["smollm2"]["stores"][DEFINITIONS[args.definition]]
    path = out_dir / f"{args.definition}-{name}.h5"
    config = RecordConfig(model="smollm2", corpus=write_corpus(out_dir / "corpus"), out=str(path),
                          tokens=args.tokens, seq_len=512, full_length=True, batch_size=4, unit_batches=4,
                          layers=layers, ngram_layers=[str(x) for x in layers], orders=args.orders or orders,
                          threshold=threshold, bos_id=MODELS["smollm2"]["bos"], threads=args.threads,
                          progress=False, **settings)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    said = []
    start = time.perf_counter()
    runner.record(config, log=lambda line: (said.append(line), print(f"[{name}] {line}", flush=True)))
    return {"path": str(path), "seconds": time.perf_counter() - start, "store_mb": path.stat().st_size / 2**20,
            "log": said}


def _same(a, b) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def agreement(exact, bounded) -> dict:
    """Per order: what the two analyses share, and where they differ (empty lists: identical)."""
    out = {}
    for k in exact.orders:
        rows, differ = [], []
        for layer in exact.ngram_layers:
            e, b = exact.coverage[k][layer], bounded.coverage[k][layer]
            de, db = exact.detectors[k][layer], bounded.detectors[k][layer]
            certified = (b.sizes == b.upper) & (b.mass > 0)
            checks = {"mass": _same(b.mass, e.mass),
                      "certified C_k(n)": _same(b.sizes[certified], e.sizes[certified]),
                      "bounds hold": bool(((b.sizes <= e.sizes) & ((b.upper >= e.sizes) | (b.upper < 0))).all()),
                      "certain bins": bool((b.histogram.counts <= e.histogram.counts).all()),
                      "detectors": _same(db.neurons, de.neurons) and db.num_uncertain == 0}
            if checks["detectors"]:
                for name in ("ngram_offsets", "ngram_keys", "ngram_active", "ngram_seen", "covered_mass"):
                    checks[f"G(n) {name}"] = _same(getattr(db, name), getattr(de, name))
            differ += [f"layer {layer}: {name}" for name, ok in checks.items() if not ok]
            rows.append({"layer": layer, "neurons_with_mass": e.neurons_with_mass, "certified": b.certified,
                         "bin_certified": b.bin_certified, "uncertain_candidates": db.num_uncertain,
                         "detectors": de.num_detectors})
        d_e, d_b = exact.detected_ngrams[k], bounded.detected_ngrams[k]
        for name in ("num_detectors", "set_size", "cumulative_size", "new_overall", "new_vs_previous"):
            if getattr(d_b, name) != getattr(d_e, name):
                differ.append(f"detected n-grams: {name}")
        out[k] = {"layers": rows, "differences": differ}
    e, b = exact.suppression_overall, bounded.suppression_overall
    same = (e is None and b is None) or (e is not None and b is not None and
                                         (e.num_suppressing, e.num_detectors) == (b.num_suppressing, b.num_detectors))
    out["suppression"] = {"exact": None if e is None else [e.num_suppressing, e.num_detectors],
                          "bounded": None if b is None else [b.num_suppressing, b.num_detectors], "same": same}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokens", default="100k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--definition", choices=sorted(DEFINITIONS), default="strict",
                        help="strict: gate_proj(x) > 1 (default); spec: the SPEC's > 0")
    parser.add_argument("--orders", type=int, nargs="+", help="n-gram orders (default: the definition's, 1 2 3)")
    parser.add_argument("--unigram-capacity", type=int, nargs="*", default=[],
                        help="also record a bounded store with each of these k = 1 summary capacities")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stores = {"exact": {"ngrams": "exact"}, "bounded": {"ngrams": "bounded"},
              **{f"bounded-u{c}": {"ngrams": "bounded", "unigram_capacity": c} for c in args.unigram_capacity}}
    runs = {name: record(args.out_dir, name, args, **settings) for name, settings in stores.items()}
    weights = ModelWeights(load_model("smollm2").model)
    results = {}
    for mode, run in runs.items():
        with open_counts(run["path"]) as counts:
            results[mode] = analyze_counts(counts, AnalysisSettings(null_samples=0), weights=weights)
            if mode != "exact":
                group = counts._file["counted"]
                run["pass2"] = {"empty_plan": bool(group.attrs["empty_plan"]),
                                "counted_neurons": int(sum(group[f"{name}/counted_neurons"][()].sum()
                                                           for name in _table_names(group)))}
    report = {"tokens": results["exact"].tokens, "runs": {m: {k: v for k, v in r.items() if k != "log"}
                                                          for m, r in runs.items()},
              "agreement": {mode: agreement(results["exact"], results[mode]) for mode in runs if mode != "exact"}}
    (args.out_dir / "agreement.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))
    for mode, said in report["agreement"].items():
        differences = [d for k in results["exact"].orders for d in said[k]["differences"]]
        print(f"{mode}: " + ("IDENTICAL" if not differences and said["suppression"]["same"] else f"DIFFER: {differences}"))
    return 0


def _table_names(group) -> list:
    return [f"{layer}/{k}" for layer in group if layer.startswith("layer") for k in group[layer]]


if __name__ == "__main__":
    raise SystemExit(main())
