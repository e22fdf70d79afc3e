"""The GPU check (issue 15): one run that proves the CUDA path on the first GPU, or runs its CPU parts.

Sections: env (versions, kernel image, CUDA problems), tests (every CUDA test case), exactness (the kernel
on the device against the CPU kernel and the naive reference on real pre-activations of a random and a
planted OPT, fp32/fp16/bf16, padded batches), kernel (fused pass vs eager torch vs a plain read of the same
bytes), share (counting's share of one OPT-1.3b / OPT-6.7b layer forward), summaries (bounded pass 1
in torch ops on the device against numba on the host: same summaries, events/s against the forward's), offload (streamed recording of
a model larger than --gpu-memory against in-memory recording, same counts) and trace (a torch profiler
trace of streaming: how much of the host-to-device copying overlaps compute). Writes gpu_check.md (one
markdown table), gpu_check.json and the trace to OUT. Exit status 1 if a check failed, or if
FASTNEURONS_REQUIRE_CUDA=1 and no GPU is visible. Run it through benchmarks/gpu_check.sh.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from fastneurons.bench.kernel import _best_times, bench_kernel
from fastneurons.kernels import count_activations, count_activations_naive, words_for
from fastneurons.models import architectures as archs
from fastneurons.recording.counter import positions_from_mask

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("env", "tests", "exactness", "kernel", "share", "summaries", "offload", "trace")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BANDWIDTH_TARGET = 0.70   # the kernel reads its input at >= 70% of a plain read's speed
SHARE_TARGET = 0.03       # counting adds <= 3% to a layer forward
OVERLAP_TARGET = 0.50     # at least half of the streamed copy time runs under compute


class Report:
    """Rows of the one table: section, check, result, target, status (PASS, FAIL, SKIP or INFO)."""

    def __init__(self):
        self.rows, self.started = [], time.perf_counter()

    def add(self, section, check, result, target="", ok=None):
        status = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append(dict(section=section, check=check, result=str(result), target=target, status=status))
        print(f"[{status}] {section}: {check}: {result}", flush=True)

    def skip(self, section, check, why):
        self.rows.append(dict(section=section, check=check, result=why, target="", status="SKIP"))
        print(f"[SKIP] {section}: {check}: {why}", flush=True)

    @property
    def failed(self) -> bool:
        return any(row["status"] == "FAIL" for row in self.rows)

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", "", "| section | check | result | target | status |", "|---|---|---|---|---|"]
        lines += [f"| {r['section']} | {r['check']} | {r['result']} | {r['target']} | {r['status']} |"
                  for r in self.rows]
        skipped = [f"{r['section']}: {r['check']}" for r in self.rows if r["status"] == "SKIP"]
        lines += ["", f"Took {time.perf_counter() - self.started:.0f} s. Skipped: {'; '.join(skipped) or 'nothing'}."]
        return "\n".join(lines) + "\n"


def check_env(report: Report, gpu: bool) -> str:
    """Versions and kernel images; returns the card's name."""
    from fastneurons.info import describe

    info = describe()
    card = torch.cuda.get_device_name(0) if gpu else "no GPU visible"
    report.add("env", "card", card)
    report.add("env", "torch / torch CUDA", f"{info['torch']} / {info['torch_cuda']}")
    report.add("env", "_C CUDA runtime / nvcc / driver",
               f"{info['kernel_cuda_runtime']} / {info['kernel_cuda_compiler']} / {info['cuda_driver']}")
    report.add("env", "_C architectures", info["kernel_cuda_architectures"])
    for line in info["gpus"]:
        report.add("env", "GPU", line, "kernel image: yes", "kernel image: yes" in line)
    if gpu:
        report.add("env", "versions fit", info["cuda_problem"], "none", info["cuda_problem"] == "none")
    elif os.environ.get("FASTNEURONS_REQUIRE_CUDA", "") not in ("", "0"):
        report.add("env", "GPU visible", f"no (torch {torch.__version__}, CUDA {torch.version.cuda})",
                   "FASTNEURONS_REQUIRE_CUDA=1", False)
    return card


def check_tests(report: Report, gpu: bool, quick: bool, out: Path) -> None:
    """Every CUDA test case (marker `cuda`, the `device` fixture's cuda cases included) in a subprocess."""
    xml = out / "cuda_tests.xml"
    targets = ["tests/test_kernels.py"] if quick else ["tests"]
    env = dict(os.environ)   # gpu_check.sh chose the package: the checkout's src/ or the installed copy
    if gpu:
        env["FASTNEURONS_REQUIRE_CUDA"] = "1"
    command = [sys.executable, "-m", "pytest", *targets, "-m", "cuda", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if not xml.exists():
        report.add("tests", "pytest -m cuda", f"no result (exit {done.returncode}): {done.stderr[-300:]}", "", False)
        return
    suite = ElementTree.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    bad = int(suite.get("failures")) + int(suite.get("errors"))
    summary = f"{total - skipped - bad} passed, {bad} failed, {skipped} skipped of {total}"
    if not gpu and bad == 0:
        report.skip("tests", "pytest -m cuda", f"{summary} (no GPU)")
        return
    if bad:
        print(done.stdout[-4000:], flush=True)
    report.add("tests", "pytest -m cuda " + " ".join(targets), summary, "0 failed, 0 skipped",
               bad == 0 and skipped == 0)


def _padded_batch(vocab: int, generator) -> tuple:
    """ids [4, 96] and a mask with full, short, one-token and left-padded rows."""
    ids = torch.randint(4, vocab, (4, 96), generator=generator)
    mask = torch.zeros(4, 96, dtype=torch.long)
    mask[0], mask[1, :70], mask[2, :1], mask[3, 46:] = 1, 1, 1, 1
    return ids, mask


def _counts(pre, positions, counted, num_positions, naive=False) -> dict:
    device = pre.device
    out = dict(active=torch.zeros(pre.shape[-1], dtype=torch.int64, device=device),
               pos_active=torch.zeros(num_positions, pre.shape[-1], dtype=torch.int64, device=device),
               bits=torch.zeros(*pre.shape[:-1], words_for(pre.shape[-1]), dtype=torch.int64, device=device),
               nan_count=torch.zeros(1, dtype=torch.int64, device=device))
    (count_activations_naive if naive else count_activations)(pre, positions, counted, 0.0, **out)
    return {name: tensor.cpu() for name, tensor in out.items()}


def _test_models() -> dict:
    from transformers import OPTConfig, OPTForCausalLM

    from fastneurons.demo.planted import build_planted_opt, default_spec

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, ffn_dim=1000, num_attention_heads=4,
                       word_embed_proj_dim=128, max_position_embeddings=256, do_layer_norm_before=True)
    return {"random OPT": OPTForCausalLM(config).eval(), "planted OPT": build_planted_opt(default_spec([5, 6, 7]))}


def check_exactness(report: Report, device: torch.device) -> None:
    """Counts of the device kernel == CPU kernel == naive reference on every layer's real pre-activations."""
    generator = torch.Generator().manual_seed(1)
    for name, base in _test_models().items():
        arch = archs.architecture_for(base)
        last = archs.num_layers(base, arch) - 1
        ids, mask = _padded_batch(base.config.vocab_size, generator)
        positions = positions_from_mask(mask)
        counted = positions >= 1
        for dtype_name, dtype in DTYPES.items():
            model = copy.deepcopy(base).to(device=device, dtype=dtype)
            captured = []
            hooks = [archs.neuron_module(model, arch, layer).register_forward_hook(
                lambda m, a, out: captured.append(out.detach().reshape(*ids.shape, out.shape[-1])))
                for layer in range(last + 1)]
            with torch.inference_mode():
                archs.run_until(model, arch, ids.to(device), mask.to(device), last)
            for hook in hooks:
                hook.remove()
            same_cpu = same_naive = True
            for pre in captured:
                here = _counts(pre, positions.to(device), counted.to(device), ids.shape[1])
                cpu = _counts(pre.cpu(), positions, counted, ids.shape[1])
                naive = _counts(pre.cpu(), positions, counted, ids.shape[1], naive=True)
                same_cpu &= all(torch.equal(here[k], cpu[k]) for k in here)
                same_naive &= all(torch.equal(cpu[k], naive[k]) for k in cpu)
            rows = f"{len(captured)} layers x {ids.numel()} rows (padded), F {captured[0].shape[-1]}"
            report.add("exactness", f"{name} {dtype_name}: CPU kernel == naive", rows, "identical", same_naive)
            if device.type == "cuda":
                report.add("exactness", f"{name} {dtype_name}: CUDA == CPU kernel", rows, "identical", same_cpu)
    if device.type != "cuda":
        report.skip("exactness", "CUDA counts == CPU kernel (fp32/fp16/bf16, random + planted, padding)", "no GPU")


def _id_corpus(path: Path, tokens: int, vocab: int, seed: int) -> list:
    """A .jsonl of random token-id documents (``tokens`` ids in all): models here need no tokenizer, so
    the check runs where the GPT-2 tokenizer package is not installed."""
    generator = torch.Generator().manual_seed(seed)
    with open(path, "w") as out:
        left = tokens
        while left > 0:
            length = min(left, int(torch.randint(50, 400, (1,), generator=generator)))
            out.write(json.dumps(torch.randint(4, vocab, (length,), generator=generator).tolist()) + "\n")
            left -= length
    return [str(path)]


def check_planted_record(report: Report, work: Path, devices=("cpu", "cuda")) -> None:
    """`record` of the planted OPT's layer 0 (exact integer sign rule) on CUDA == on the CPU: the whole
    store, n-gram tables (so the pinned bits copies) included."""
    from fastneurons.config import RecordConfig
    from fastneurons.demo.planted import build_planted_opt, default_spec
    from fastneurons.recording.runner import record

    sys.path.insert(0, str(REPO / "tests"))
    try:
        from same_counts import assert_same_store
    finally:
        sys.path.pop(0)
    spec = default_spec(list(range(300, 312)), max_positions=256, seed=0)
    model_dir = work / "planted-opt"
    build_planted_opt(spec).save_pretrained(model_dir)
    corpus = _id_corpus(work / "planted-ids.jsonl", 20000, spec.vocab_size, seed=2)
    base = RecordConfig(model=str(model_dir), corpus=corpus, out="", tokens="16384", seq_len=256, full_length=True,
                        batch_size=8, layers=[0], ngram_layers=["0"], dtype="float32", bos_id=spec.bos_token_id,
                        ngrams="exact", progress=False)  # every (n-gram, neuron) pair compared
    stores = [work / f"planted-{i}-{device}.h5" for i, device in enumerate(devices)]
    for store, device in zip(stores, devices):
        record(dataclasses.replace(base, out=str(store), device=device), log=lambda *a: None)
    try:
        assert_same_store(stores[0], stores[-1])
        same, detail = True, "identical (dense, per-domain, n-gram tables)"
    except AssertionError as error:
        same, detail = False, str(error).splitlines()[0][:200]
    report.add("exactness", f"planted OPT layer 0, record on {devices[-1]} == on {devices[0]} (16k tokens, fp32)",
               detail, "identical", same)


def check_kernel(report: Report, device: torch.device, quick: bool) -> None:
    """The fused pass against eager torch and a plain read of its input, at OPT-1.3b and 6.7b widths."""
    gpu = device.type == "cuda"
    widths = (8192,) if quick else (8192, 16384)
    dtypes = ("bfloat16",) if quick else ("float16", "bfloat16", "float32")
    tokens, batch = (16384, 8) if gpu else ((128, 2) if quick else (1024, 2))
    for neurons in widths:
        for dtype in dtypes:
            r = bench_kernel(tokens=tokens, neurons=neurons, max_positions=2048, dtype=dtype, device=device,
                             repeats=5 if gpu else 1, batch_size=batch)
            label = f"{tokens} tokens x F {neurons} {dtype}"
            report.add("kernel", f"{label}: same counts as eager torch", r["results_agree"], "True", r["results_agree"])
            # All bytes moved: the input, the bits and a read and a write of each touched pos_active row
            # (int64 [T, F]: as many bytes as an fp16 input of 8 rows per position), as HBM traffic.
            fraction = r["fraction_of_read_bandwidth_all_bytes"]
            result = (f"{fraction:.2f} of {r['read_baseline']} counting all {r['moved_gb']:.2f} GB moved "
                      f"({r['fraction_of_read_bandwidth']:.2f} counting the {r['input_gb']:.2f} GB input alone; "
                      f"read {r['read_gbps']:.0f} GB/s); {r['speedup_vs_torch']:.1f}x eager torch")
            report.add("kernel", f"{label}: speed / plain read", result, f">= {BANDWIDTH_TARGET:.2f}" if gpu else "",
                       fraction >= BANDWIDTH_TARGET if gpu else None)
    if not gpu:
        report.skip("kernel", "HBM bandwidth fraction", "no GPU (the CPU figures above are for the CPU twin)")


def check_share(report: Report, device: torch.device, quick: bool) -> None:
    """Counting (dense counters + bits) as a share of one OPT layer forward of the same tokens."""
    from transformers import OPTForCausalLM

    from fastneurons.bench.workloads import opt_config

    gpu = device.type == "cuda"
    sizes = ("tiny",) if quick else ("1.3b", "6.7b")
    batch, seq_len = (8, 2048) if gpu else (2, 32 if quick else 64)
    forward = {}
    dtype = torch.float16 if gpu else torch.float32
    for size in sizes:
        config = opt_config(size)
        config.num_hidden_layers, config.vocab_size = 1, 1024   # one layer; the embedding is not timed
        with torch.device(device):
            model = OPTForCausalLM(config).to(dtype).eval()
        arch = archs.architecture_for(model)
        ids = torch.randint(4, 1024, (batch, seq_len), device=device)
        mask = torch.ones_like(ids)
        positions = positions_from_mask(mask).to(device)
        counted = positions >= 1
        neurons = config.ffn_dim
        sums = dict(active=torch.zeros(neurons, dtype=torch.int64, device=device),
                    pos_active=torch.zeros(seq_len, neurons, dtype=torch.int64, device=device),
                    bits=torch.empty(batch, seq_len, words_for(neurons), dtype=torch.int64, device=device),
                    nan_count=torch.zeros(1, dtype=torch.int64, device=device))
        captured = {}

        def count(module, args, out):
            captured["pre"] = out.view(batch, seq_len, neurons)
            count_activations(captured["pre"], positions, counted, 0.0, **sums)

        fc1 = archs.neuron_module(model, arch, 0)

        def bare():
            with torch.inference_mode():
                archs.run_until(model, arch, ids, mask, 0)

        def hooked():
            handle = fc1.register_forward_hook(count)
            try:
                bare()
            finally:
                handle.remove()

        hooked()
        pre = captured["pre"]
        kernel_only = lambda: count_activations(pre, positions, counted, 0.0, **sums)  # noqa: E731
        t_bare, t_hooked, t_kernel = _best_times([bare, hooked, kernel_only], 5 if gpu else 2, device)
        share = (t_hooked - t_bare) / t_bare
        forward[size] = (t_bare, batch * seq_len)
        label = f"OPT-{size} layer, {batch * seq_len} tokens {str(dtype)[6:]}"
        report.add("share", f"{label}: counting / layer forward",
                   f"{100 * share:.1f}% ({1e3 * t_bare:.2f} ms forward; kernel alone {1e3 * t_kernel:.3f} ms = "
                   f"{100 * t_kernel / t_bare:.1f}%)", f"<= {100 * SHARE_TARGET:.0f}%" if gpu else "",
                   share <= SHARE_TARGET if gpu else None)
        del model, pre, captured, sums
    if not gpu:
        report.skip("share", "OPT-1.3b / OPT-6.7b layers on the GPU", "no GPU")
    return forward


def check_summaries(report: Report, device: torch.device, quick: bool, forward: dict) -> None:
    """Bounded pass 1 on the device (torch ops) == on the host (numba), at OPT-1.3b width, 5% active; its
    time per layer against one OPT-1.3b layer forward of the same tokens (from the share section)."""
    from fastneurons.bench.summaries import bench_summaries

    gpu = device.type == "cuda"
    neurons, tokens, chunks = (8192, 16384, 8) if gpu else ((256, 512, 2) if quick else (8192, 2048, 2))
    r = bench_summaries(device, neurons=neurons, tokens=tokens, chunks=chunks, density=0.05)
    label = f"F {neurons}, {chunks} x {tokens} tokens, 5% active, k = 1, 2, 3"
    report.add("summaries", f"{label}: device summaries == host summaries", r["identical"], "True", r["identical"])
    report.add("summaries", f"{label}: events/s", f"device {r['device_events_per_s'] / 1e6:.1f} M/s, host (numba) "
               f"{r['host_events_per_s'] / 1e6:.1f} M/s; {r['summary_rows']} summary rows")
    if gpu and "1.3b" in forward:
        t_bare, forward_tokens = forward["1.3b"]
        per_layer = r["device_seconds"] / r["tokens"] * forward_tokens
        report.add("summaries", "pass 1 of one layer / that layer's forward (OPT-1.3b)",
                   f"{per_layer / t_bare:.2f} ({1e3 * per_layer:.2f} ms vs {1e3 * t_bare:.2f} ms per "
                   f"{forward_tokens} tokens)", "<= 1 (keeps up)", per_layer <= t_bare)
    else:
        report.skip("summaries", "device pass 1 against the OPT-1.3b forward", "no GPU" if not gpu else "share not run")


def _offload_model(work: Path, tokens: int, size: str):
    """An OPT-``size``-shaped fp16 checkpoint with random weights (no tokenizer) and an id corpus for it."""
    from transformers import OPTForCausalLM

    from fastneurons.bench.workloads import opt_config

    torch.manual_seed(0)
    config = opt_config(size)
    model = OPTForCausalLM._from_config(config, dtype=torch.float16).eval()
    path = work / f"opt-{size}"
    model.save_pretrained(path)
    info = {"name": f"opt-{size}-shaped (random)", "path": str(path),
            "parameters": sum(p.numel() for p in model.parameters())}
    corpus = _id_corpus(work / "offload-ids.jsonl", 2 * tokens, config.vocab_size, seed=3)
    return corpus, info


def check_offload(report: Report, work: Path, budget: str, tokens: int, size: str = "1.3b", device: str = "cuda"):
    """Streamed recording of OPT-1.3b (fp16, 2.6 GB) under --gpu-memory against in-memory recording."""
    import numpy as np

    from fastneurons.config import RecordConfig, parse_bytes
    from fastneurons.recording.runner import record
    from fastneurons.store import open_counts

    corpus, info = _offload_model(work, tokens, size)
    weights = 2 * info["parameters"]
    report.add("offload", "model", f"{info['name']}, {weights / 2**30:.2f} GiB fp16 weights, --gpu-memory {budget}",
               "weights > budget", weights > parse_bytes(budget))
    base = RecordConfig(model=info["path"], corpus=corpus, out="", tokens=str(tokens), seq_len=512, batch_size=8,
                        ngram_layers=["none"], device=device, dtype="float16", bos_id=2, progress=False)
    times = {}
    for label, gpu_memory in (("in memory", None), ("streamed", budget)):
        out = work / f"{label.replace(' ', '_')}.h5"
        start = time.perf_counter()
        record(dataclasses.replace(base, out=str(out), gpu_memory=gpu_memory), log=lambda *a: None)
        times[label] = (time.perf_counter() - start, out)
    with open_counts(times["in memory"][1]) as a, open_counts(times["streamed"][1]) as b:
        same = a.tokens == b.tokens and all(np.array_equal(a.active(layer), b.active(layer)) and
                                            np.array_equal(a.pos_active(layer), b.pos_active(layer))
                                            for layer in a.layers)
        recorded = a.tokens
    (t_memory, _), (t_stream, _) = times["in memory"], times["streamed"]
    report.add("offload", "streamed vs in-memory record (whole run, load included)",
               f"{t_stream:.1f} s vs {t_memory:.1f} s ({t_stream / t_memory:.2f}x) for {recorded} tokens")
    report.add("offload", "identical counts", same, "True", same)
    return info


def _intervals(events, keep) -> list:
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and keep(e))
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def copy_overlap(events) -> tuple:
    """(host-to-device copy time in us, share of it during which a kernel runs) from chrome-trace events."""
    copies = _intervals(events, lambda e: e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", ""))
    kernels = _intervals(events, lambda e: e.get("cat") == "kernel")
    total = sum(end - start for start, end in copies)
    overlap, k = 0.0, 0
    for start, end in copies:
        while k < len(kernels) and kernels[k][1] <= start:
            k += 1
        j = k
        while j < len(kernels) and kernels[j][0] < end:
            overlap += min(end, kernels[j][1]) - max(start, kernels[j][0])
            j += 1
    return total, (overlap / total if total else 0.0)


def check_trace(report: Report, info: dict, budget: str, out: Path, device: str = "cuda") -> None:
    """Profile three streamed micro-batches (with counting hooks) and measure copy/compute overlap."""
    from torch.profiler import ProfilerActivity, profile

    from fastneurons.config import parse_bytes
    from fastneurons.models.loading import load_model
    from fastneurons.models.offload import LayerStreamer
    from fastneurons.recording.counter import attach_counters

    loaded = load_model(info["path"], dtype=torch.float16)
    model, arch = loaded.model, loaded.arch
    last = archs.num_layers(model, arch) - 1
    names = [name for name, module in model.named_modules()
             if any(module is archs.neuron_module(model, arch, i) for i in range(last + 1))]
    ids = torch.randint(4, 50000, (8, 512), device=device)
    mask = torch.ones_like(ids)
    cuda = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with LayerStreamer(model, arch, device, last, gpu_memory_bytes=parse_bytes(budget)) as streamer, \
            attach_counters(model, names, max_positions=512) as counters, torch.inference_mode():
        counters.set_batch(mask)                           # run_until bypasses the model's own forward
        archs.run_until(model, arch, ids, mask, last)      # warm-up
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(3):
                archs.run_until(model, arch, ids, mask, last)
            if cuda:
                torch.cuda.synchronize()
        mode = streamer.plan.mode
    trace = out / "offload_trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    with open(trace, "rb") as source, gzip.open(out / "offload_trace.json.gz", "wb") as target:
        target.write(source.read())
    trace.unlink()
    total, share = copy_overlap(events)
    report.add("trace", f"streamed ({mode}) host-to-device copies overlapped by kernels",
               f"{100 * share:.0f}% of {total / 1e3:.1f} ms copying (3 batches of 8 x 512; offload_trace.json.gz)",
               f">= {100 * OVERLAP_TARGET:.0f}%", mode == "stream" and share >= OVERLAP_TARGET)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for gpu_check.md, gpu_check.json and the trace")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CI run in CPU mode)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, help="sections not to run")
    parser.add_argument("--gpu-memory", default="1G", help="weight budget of the offload check (default 1G)")
    parser.add_argument("--offload-tokens", type=int, default=65536, help="tokens per offload recording")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))   # models and stores: never among the results
    try:
        return run_checks(args, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_checks(args, out: Path, work: Path) -> int:
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    report = Report()
    card = check_env(report, gpu) if "env" not in args.skip else "not checked"
    wanted = [s for s in SECTIONS[1:] if s not in args.skip]
    if "tests" in wanted:
        check_tests(report, gpu, args.quick, out)
    if "exactness" in wanted:
        check_exactness(report, device)
        if gpu:
            check_planted_record(report, work)
        else:
            report.skip("exactness", "planted OPT record on CUDA == on CPU", "no GPU")
    if "kernel" in wanted:
        check_kernel(report, device, args.quick)
    forward = check_share(report, device, args.quick) if "share" in wanted else {}
    if "summaries" in wanted:
        check_summaries(report, device, args.quick, forward)
    info = None
    if "offload" in wanted:
        if gpu:
            info = check_offload(report, work, args.gpu_memory, args.offload_tokens)
        else:
            report.skip("offload", "streamed vs in-memory recording of OPT-1.3b", "no GPU")
    if "trace" in wanted:
        if gpu:
            info = info or _offload_model(work, args.offload_tokens, "1.3b")[1]
            check_trace(report, info, args.gpu_memory, out)
        else:
            report.skip("trace", "profiler trace of copy/compute overlap", "no GPU")
    title = f"fastneurons GPU check: {card}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    (out / "gpu_check.md").write_text(report.markdown(title))
    (out / "gpu_check.json").write_text(json.dumps({"title": title, "rows": report.rows}, indent=1))
    print("\n" + report.markdown(title))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
