"""SmolLM2-135M-Instruct (Q4_1 GGUF) or Gemma 3 270M (Q4_K_M GGUF), dequantized to fp32, on real text: record,
analyse, print the README numbers (--model smollm2, the default, or --model gemma3-270m; docs/gemma3.md).

Two recordings of the same corpus plan per model (docs/smollm2.md explains why two); for SmolLM2:
  counts.h5         the SPEC default definition, gate_proj(x) > 0 (= SiLU(gate) > 0): all 30 layers, positions,
                    token (k=1) tables on the first half. Trigram tables are left out at this threshold:
                    19-63% of a layer's neurons fire at a token, so each layer's (trigram, neuron) table grows by
                    5-14M rows per 20k tokens (measured), and it found no token detectors anyway.
  counts-strict.h5  a stricter definition, gate_proj(x) > 1.0 (SiLU(gate) > 0.73), on layers 0..14 only
                    (the forward stops there), positions and k = 1, 2, 3 tables: 0.6-3.5% of the neurons
                    fire per token there (measured), a ReLU-like sparsity.

    python benchmarks/smollm2_run.py all OUT_DIR [--tokens 1M]        # record both, then analyse
    python benchmarks/smollm2_run.py record OUT_DIR --which default    # one store (run two at once on 2 cores)
    python benchmarks/smollm2_run.py analyze OUT_DIR                   # print the numbers of the stores there
    python benchmarks/smollm2_run.py all OUT_DIR --model gemma3-270m   # the same for Gemma 3 270M (own OUT_DIR)

For Gemma 3 (18 layers x 2048 GeGLU neurons) the strict store is gate_proj(x) > 1.5 on layers 0..8
(the first half; 0.3-5.7% of the neurons fire per token there on a 1k-token sample, docs/gemma3.md),
and BOS is Gemma's own <bos> (id 2).

A recording interrupted (Ctrl-C, kill) keeps its committed units; `record ... --resume` finishes it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import numpy as np

from fastneurons.recording import runner
from fastneurons.analysis.pipeline import AnalysisSettings, analyze_counts
from fastneurons.models.architectures import ModelWeights
from fastneurons.config import RecordConfig
from fastneurons.models.loading import load_model
from fastneurons.demo.stdlib_text import CODE_FILE, DOCSTRINGS_FILE, stdlib_text
from fastneurons.store import open_counts

ROBUST_MIN_COUNT = 5  # the stricter analysis setting: covered n-grams need ngram_seen >= 5
LICENSES = Path("/usr/share/common-licenses")
# model -> BOS id and its stores, name -> (file, threshold, layers, orders, n-gram mode); n-gram tables on the
# first half. SmolLM2's "bounded" store is the SPEC definition (t = 0) with k = 1, 2, 3 on layers 0..14, which
# only the bounded n-gram mode can hold (docs/smollm2.md); it is not part of "both".
MODELS = {
    "smollm2": {"bos": 0,  # <|endoftext|>: SmolLM2's document boundary (docs/smollm2.md, "BOS")
                "half": 15, "stores": {"default": ("counts.h5", 0.0, None, [1], "exact"),
                                       "strict": ("counts-strict.h5", 1.0, list(range(15)), [1, 2, 3], "exact"),
                                       "bounded": ("counts-bounded.h5", 0.0, list(range(15)), [1, 2, 3],
                                                   "bounded")}},
    "gemma3-270m": {"bos": 2,  # <bos>, the tokenizer's own (docs/gemma3.md)
                    "half": 9, "stores": {"default": ("counts.h5", 0.0, None, [1], "exact"),
                                          "strict": ("counts-strict.h5", 1.5, list(range(9)), [1, 2, 3],
                                                     "exact")}},
}


def write_corpus(directory: Path) -> list:
    """The corpus files (label=path): stdlib code, stdlib docstrings, and license texts if the OS ships them.

    Files already in `directory` are reused (a resumed or concurrent recording must see the same bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    code, docs = directory / CODE_FILE, directory / DOCSTRINGS_FILE
    if not (code.is_file() and docs.is_file()):
        code, docs = stdlib_text(directory)
    corpus = [f"code={code}", f"docstrings={docs}"]
    path = directory / "licenses.txt"
    if not path.is_file() and LICENSES.is_dir():
        files = sorted({p.resolve() for p in LICENSES.iterdir() if p.is_file()})
        texts = [p.read_text(encoding="utf-8", errors="replace").strip() for p in files]
        path.write_text("\n\n".join(t for t in texts if t) + "\n", encoding="utf-8")
    if path.is_file():
        corpus.append(f"licenses={path}")
    return corpus


def record_store(out_dir: Path, which: str, tokens: str, threads: int, resume: bool, seq_len: int,
                 model: str = "smollm2") -> Path:
    """Record one of the model's two stores into out_dir (same corpus plan for both)."""
    name, threshold, layers, orders, ngrams = MODELS[model]["stores"][which]
    corpus = write_corpus(out_dir / "corpus")
    config = RecordConfig(model=model, corpus=corpus, out=str(out_dir / name), tokens=tokens, seq_len=seq_len,
                          full_length=True, batch_size=4, unit_batches=4, layers=layers,
                          ngram_layers=[str(x) for x in range(MODELS[model]["half"])], orders=orders,
                          threshold=threshold, bos_id=MODELS[model]["bos"], threads=threads, resume=resume,
                          ngrams=ngrams, progress=False)
    # numba's first parallel launch resets the OpenMP thread count torch's BLAS reads; matching the two keeps
    # every micro-batch's arithmetic the same, so a resumed run stays bit-exact (see docs/smollm2.md)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    start = time.time()
    path = runner.record(config)
    with open_counts(path) as counts:
        rate = counts.tokens / (time.time() - start)
        print(f"[{which}] {counts.tokens} counted tokens in {time.time() - start:.0f} s ({rate:.0f} tok/s) -> {path}",
              flush=True)
    return path


def _histogram_line(coverage) -> str:
    h = coverage.histogram
    return " ".join(f"{label}:{int(c)}" for label, c in zip(h.labels, h.counts))


def analyze_store(path: Path, weights, null_samples: int) -> dict:
    """Run every analysis on one store, print the README numbers, return the summary dict."""
    settings = AnalysisSettings(null_samples=null_samples)
    start = time.time()
    with open_counts(path) as counts:
        complete, units = counts.complete, counts.units_held
        results = analyze_counts(counts, settings, weights=weights)
    print(f"\n== {path.name}: {results.neuron_definition}")
    print(f"tokens {results.tokens} ({'complete' if complete else f'PARTIAL: {units} units'}), "
          f"analysis {time.time() - start:.0f} s")
    print("layer  freq(alive)  dead%  positional(plain/corrected)")
    for i, layer in enumerate(results.layers):
        pos = results.positional.get(layer)
        pos_text = f"{pos.num_positional}/{pos.num_positional_corrected}" if pos is not None else "-"
        print(f"{layer:5d}  {results.dead[layer].mean_alive_frequency:11.4f}  "
              f"{results.dead[layer].dead_percent:5.1f}  {pos_text}")
    for k in results.orders:
        print(f"coverage C_{k} histograms (neurons per bin):")
        for layer in results.ngram_layers:
            print(f"  layer {layer:2d}  {_histogram_line(results.coverage[k][layer])}")
        detected = results.detected_ngrams[k]
        print(f"k={k} detectors per layer {detected.num_detectors} (total {sum(detected.num_detectors)}); "
              f"detected n-grams per layer {detected.set_size}; cumulative {detected.cumulative_size[-1:]}")
    if results.positional:
        plain = sum(p.num_positional for p in results.positional.values())
        corrected = sum(p.num_positional_corrected for p in results.positional.values())
        print(f"positional neurons, all layers: {plain} plain (I > {settings.mi_threshold}), "
              f"{corrected} above the {settings.null_quantile} bootstrap null quantile")
    if results.suppression_overall is not None:
        s = results.suppression_overall
        print(f"suppression: {s.num_suppressing}/{s.num_detectors} token detectors suppress their triggers "
              f"({s.fraction_suppressing}), mean trigger percentile {s.mean_percentile}")
    summary = results.to_dict(per_neuron=False)
    if results.orders:  # detectors whose covered n-grams were each seen at least 5 times (fewer flukes)
        with open_counts(path) as counts:
            robust = analyze_counts(counts, AnalysisSettings(min_count=ROBUST_MIN_COUNT, null_samples=0))
        for k in robust.orders:
            found = robust.detected_ngrams[k]
            print(f"k={k} detectors with --min-count {ROBUST_MIN_COUNT}: per layer {found.num_detectors} "
                  f"(total {sum(found.num_detectors)}); detected n-grams cumulative {found.cumulative_size[-1:]}")
        summary["robust_detectors"] = {k: robust.detected_ngrams[k].to_dict() for k in robust.orders}
    json.dumps(summary)
    return summary


def analyze(out_dir: Path, null_samples: int, model: str = "smollm2") -> None:
    """Analyse whichever of the model's two stores exist in out_dir; write summary-<name>.json beside them."""
    weights = ModelWeights(load_model(model).model)
    for which, (name, *_rest) in MODELS[model]["stores"].items():
        path = out_dir / name
        if not path.exists():
            print(f"{path}: not recorded, skipped")
            continue
        summary = analyze_store(path, weights, null_samples)
        (out_dir / f"summary-{which}.json").write_text(json.dumps(summary))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["all", "record", "analyze"])
    parser.add_argument("out_dir", type=Path, help="folder for the corpus, the counts stores and the summaries")
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--which", choices=["default", "strict", "bounded", "both"], default="both")
    parser.add_argument("--tokens", default="1M", help="token budget of the corpus plan (both stores)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch (and numba) threads per recording; 1 is fastest on a busy 2-core box")
    parser.add_argument("--resume", action="store_true", help="finish interrupted recordings")
    parser.add_argument("--null-samples", type=int, default=200, help="bootstrap draws of the positional null")
    args = parser.parse_args(argv)
    np.set_printoptions(linewidth=160)
    if args.step in ("all", "record"):
        for which in (["default", "strict"] if args.which == "both" else [args.which]):
            record_store(args.out_dir, which, args.tokens, args.threads, args.resume, args.seq_len, args.model)
    if args.step in ("all", "analyze"):
        analyze(args.out_dir, args.null_samples, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
