"""End to end: fastneurons' ``record`` vs the plain way vs the bare forward, on the same micro-batches.

Every method runs in its own worker process, forked from a server that has already imported torch
and transformers, so its peak resident memory (``ru_maxrss``) is its own and the start costs little.
The methods take turns round by round (the machine may be shared) and the median time is reported.
Models are OPT configs with the real sizes of facebook/opt-* and random weights ("random": about half
the neurons fire) or with fc1 biases of the first half shifted so about 5% fire ("sparse"), or the
real SmolLM2-135M. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import resource
import shutil
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

# The released facebook/opt-* configs (vocab 50272, 2048 positions, ReLU): hidden, layers, ffn_dim,
# heads, word_embed_proj_dim, pre-LN. "tiny" is not a release: it keeps --quick fast.
OPT_SIZES = {
    "tiny": (64, 4, 256, 4, 64, True),
    "125m": (768, 12, 3072, 12, 768, True),
    "350m": (1024, 24, 4096, 16, 512, False),
    "1.3b": (2048, 24, 8192, 32, 2048, True),
    "2.7b": (2560, 32, 10240, 32, 2560, True),
    "6.7b": (4096, 32, 16384, 32, 4096, True),
    "13b": (5120, 40, 20480, 40, 5120, True),
    "30b": (7168, 48, 28672, 56, 7168, True),
    "66b": (9216, 64, 36864, 72, 9216, True),
}
DENSITIES = ("random", "sparse")
SPARSE_TARGET = 0.05  # fraction of (token, neuron) pairs active in the first half, as in trained OPTs
METHODS = {  # name -> (what runs, RecordConfig overrides)
    "bare": ("bare", {}),
    "plain": ("plain", {}),
    "fastneurons": ("fastneurons", {}),
    "fastneurons_dense": ("fastneurons", {"ngram_layers": ["none"]}),
}


def opt_config(size: str, max_positions: int = 2048):
    """The OPTConfig of facebook/opt-``size`` (random weights are built from it; nothing is downloaded)."""
    from transformers import OPTConfig

    if size not in OPT_SIZES:
        raise ValueError(f"unknown OPT size {size!r}: choose one of {', '.join(OPT_SIZES)}")
    hidden, layers, ffn, heads, proj, pre_ln = OPT_SIZES[size]
    return OPTConfig(vocab_size=50272, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                     num_attention_heads=heads, word_embed_proj_dim=proj, do_layer_norm_before=pre_ln,
                     max_position_embeddings=max_positions, activation_function="relu",
                     bos_token_id=50256, eos_token_id=50256, pad_token_id=1)


def corpus_files(directory, tokens: int) -> list:
    """Two real-text domains from the Python stdlib (code, docstrings), enough for ``tokens`` tokens."""
    from fastneurons.stdlib_text import stdlib_text

    directory = Path(directory)
    max_bytes = max(1 << 16, 8 * int(tokens))
    code, docs = stdlib_text(directory, max_bytes=max_bytes)
    return [f"code={code}", f"docstrings={docs}"]


def _plan_batches(model, tokenizer, corpus, tokens, seq_len, batch_size, full_length=True, unit_batches=4):
    """The (input_ids, attention_mask) micro-batches ``record`` runs on, planned exactly as it does."""
    from fastneurons.corpus import parse_corpus_arg, plan_corpus

    vocab = int(model.get_input_embeddings().weight.shape[0])
    plan = plan_corpus([parse_corpus_arg(c) for c in corpus], tokenizer, seq_len=seq_len, batch_size=batch_size,
                       unit_batches=unit_batches, max_tokens=tokens, full_length=full_length, vocab_size=vocab)
    return [(mb.input_ids, mb.attention_mask) for u in range(plan.num_units) for mb in plan.unit(u).batches]


def layer_densities(model, batches, layers) -> list:
    """Fraction of non-pad (token, neuron) pairs with pre-activation > 0, per layer, on ``batches``."""
    from fastneurons import architectures as archs

    arch = archs.architecture_for(model)
    sums = {layer: [0, 0] for layer in layers}
    state = {}

    def hook(layer):
        def count(module, args, out):
            on = out.reshape(-1, out.shape[-1])[state["valid"]] > 0
            sums[layer][0] += int(on.sum())
            sums[layer][1] += on.numel()
        return count

    handles = [archs.neuron_module(model, arch, layer).register_forward_hook(hook(layer)) for layer in layers]
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                state["valid"] = mask.reshape(-1).bool()
                archs.run_until(model, arch, ids, mask, max(layers))
    finally:
        for handle in handles:
            handle.remove()
    return [a / max(1, n) for a, n in (sums[layer] for layer in layers)]


def make_sparse(model, batches, layers, target: float = SPARSE_TARGET) -> None:
    """Shift each of ``layers``' fc1 biases (in order) by its pre-activation quantile so ~``target`` fire.

    The shift of layer l is calibrated with layers < l already shifted, on ``batches``.
    """
    from fastneurons import architectures as archs

    arch = archs.architecture_for(model)
    rng = np.random.default_rng(0)
    for layer in layers:
        module = archs.neuron_module(model, arch, layer)
        captured, state_valid = [], [None]
        handle = module.register_forward_hook(
            lambda mod, args, out: captured.append(out.detach().reshape(-1, out.shape[-1])[state_valid[0]].float()))
        try:
            with torch.inference_mode():
                for ids, mask in batches:
                    state_valid[0] = mask.reshape(-1).bool()
                    archs.run_until(model, arch, ids, mask, layer)
        finally:
            handle.remove()
        values = torch.cat(captured).reshape(-1).numpy()
        sample = values if values.size <= 1 << 22 else rng.choice(values, 1 << 22, replace=False)
        shift = float(np.quantile(sample, 1.0 - target))
        with torch.no_grad():
            module.bias.sub_(shift)


def prepare_opt(size: str, density: str, directory, corpus, seq_len: int, calibration_tokens: int,
                dtype=torch.float32, seed: int = 0) -> dict:
    """Build an OPT-``size``-shaped model with random weights (``density`` random or sparse), save it with
    the GPT-2 tokenizer into ``directory``; return its description (measured densities included)."""
    from transformers import OPTForCausalLM

    from fastneurons.loading import gpt2_tokenizer

    if density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    torch.manual_seed(seed)
    config = opt_config(size)
    model = OPTForCausalLM._from_config(config, dtype=dtype).eval()
    model.requires_grad_(False)
    layers = list(range(config.num_hidden_layers))
    first_half = layers[: (len(layers) + 1) // 2]
    densities = [None] * len(layers)
    if calibration_tokens:
        batches = _plan_batches(model, gpt2_tokenizer(), corpus, calibration_tokens, seq_len, batch_size=4)
        if density == "sparse":
            make_sparse(model, batches, first_half)
        densities = layer_densities(model, batches, layers)
    elif density == "sparse":
        raise ValueError("a sparse model needs calibration_tokens > 0 to calibrate its biases")
    directory = Path(directory)
    model.save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    half = len(first_half)
    return {"name": f"opt-{size}-shaped ({density})", "path": str(directory), "size": size, "density": density,
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden": config.hidden_size, "layers": config.num_hidden_layers, "ffn_dim": config.ffn_dim,
            "layer_density": densities, "first_half_density": _mean(densities[:half]),
            "second_half_density": _mean(densities[half:])}


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


@dataclass
class Job:
    """One end-to-end setting: which model, which corpus, how many tokens, how it is cut and run."""

    model: str
    corpus: list
    tokens: int
    work_dir: str
    seq_len: int = 512
    batch_size: int = 2
    full_length: bool = True
    device: str = "cpu"
    dtype: str = "auto"
    threads: Optional[int] = None
    gpu_memory: Optional[str] = None
    reuse_model: bool = False  # record loads the model on its first run only (a GGUF takes seconds to decode)
    record_overrides: dict = field(default_factory=dict)

    def record_config(self, out, **overrides):
        """The RecordConfig fastneurons runs for this job."""
        from fastneurons.config import RecordConfig

        values = dict(model=self.model, corpus=list(self.corpus), out=str(out), tokens=str(self.tokens),
                      seq_len=self.seq_len, batch_size=self.batch_size, full_length=self.full_length,
                      device=self.device, dtype=self.dtype, threads=self.threads, gpu_memory=self.gpu_memory,
                      progress=False)
        values.update(self.record_overrides)
        values.update(overrides)
        return RecordConfig(**values)


# ----------------------------------------------------------------------------- worker processes

def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak resident set size in MiB since the last ``_reset_peak_rss`` (VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0), so a run's peak is its own; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_s() -> float:
    """CPU seconds (user + system) of all threads of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Phases:
    """Wall time spent inside chosen functions of the runner, installed by wrapping them (worker only)."""

    def __init__(self, cuda: bool):
        self.seconds, self.cpu, self.cuda = {}, {}, cuda

    def wrap(self, owner, name: str, phase: str, static: bool = False) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), _cpu_s()
            try:
                return original(*args, **kwargs)
            finally:
                if self.cuda:
                    torch.cuda.synchronize()
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
                self.cpu[phase] = self.cpu.get(phase, 0.0) + _cpu_s() - cpu

        setattr(owner, name, staticmethod(timed) if static else timed)

    def take(self) -> tuple:
        """(wall seconds, CPU seconds) per phase since the last take."""
        taken = self.seconds, self.cpu
        self.seconds, self.cpu = {}, {}
        return taken


def _instrument_runner(cuda: bool) -> _Phases:
    """Time record()'s parts: setup, forward (with the hooks inside), per-chunk work, store writes."""
    from fastneurons import architectures, runner

    phases = _Phases(cuda)
    phases.wrap(runner, "load_model", "load_model")
    phases.wrap(runner, "plan_corpus", "plan_corpus")
    phases.wrap(runner, "build_header", "header")
    phases.wrap(architectures, "run_until", "forward")
    phases.wrap(runner.LayerTaps, "_count", "forward.hooks")
    phases.wrap(runner, "count_activations", "forward.hooks.kernel")
    phases.wrap(runner.NgramAccumulator, "add", "forward.hooks.ngram_add")
    phases.wrap(runner.LayerTaps, "set_batch", "set_batch")
    phases.wrap(runner.LayerTaps, "take_tables", "ngram_tables")
    phases.wrap(runner.LayerTaps, "totals", "totals")
    phases.wrap(runner.CountsWriter, "create", "store.create", static=True)
    phases.wrap(runner.CountsWriter, "write_run", "store.write_run")
    phases.wrap(runner.CountsWriter, "_snapshot", "store.commit")  # commit(final=True) calls finalize instead
    phases.wrap(runner.CountsWriter, "finalize", "store.finalize")
    return phases


def _load_once() -> None:
    """Make the runner's load_model remember the model it loaded (later records skip the load)."""
    from fastneurons import runner

    original, cache = runner.load_model, {}

    def load(spec, **kwargs):
        key = (str(spec), repr(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(spec, **kwargs)
        return cache[key]

    runner.load_model = load


def _warm_up_counting() -> None:
    """Load the compiled kernels (numba cache, _C) on a tiny input, outside any timed region."""
    from fastneurons.ngrams.accumulator import NgramAccumulator, SeenAccumulator
    from fastneurons.kernels import count_activations

    pre = torch.randn(2, 16, 70)
    positions = torch.arange(16, dtype=torch.int32).expand(2, 16).contiguous()
    bits = torch.zeros(2, 16, 2, dtype=torch.int64)
    count_activations(pre, positions, positions >= 1, 0.0, torch.zeros(70, dtype=torch.int64),
                      torch.zeros(16, 70, dtype=torch.int64), bits=bits, nan_count=torch.zeros(1, dtype=torch.int64))
    ids = np.arange(32, dtype=np.int64) % 7
    flat = positions.reshape(-1).numpy()
    accumulator = NgramAccumulator(70)
    accumulator.add(bits.reshape(32, 2).numpy().view(np.uint64), ids, flat, flat >= 1)
    accumulator.tables()
    seen = SeenAccumulator()
    seen.add(ids, flat, flat >= 1)
    seen.tables()


class _Worker:
    """State of one method inside its worker process."""

    def __init__(self, kind: str, job: Job, overrides: dict):
        from fastneurons import architectures as archs
        from fastneurons.loading import load_model

        self.kind, self.job, self.overrides = kind, job, overrides
        if job.threads:
            torch.set_num_threads(job.threads)
        self.device = torch.device(job.device)
        self.cuda = self.device.type == "cuda"
        _warm_up_counting()
        self.last_store, self.last_counts, self.runs = None, None, 0
        if kind == "fastneurons":
            if job.reuse_model:
                _load_once()
            self.phases = _instrument_runner(self.cuda)
            return
        dtype = torch.float16 if (job.dtype == "auto" and self.cuda) else \
            torch.float32 if job.dtype == "auto" else getattr(torch, job.dtype)
        loaded = load_model(job.model, dtype=dtype)
        self.model, self.arch = loaded.model, loaded.arch
        self.num_layers = archs.num_layers(self.model, self.arch)
        self.batches = _plan_batches(self.model, loaded.tokenizer, job.corpus, job.tokens, job.seq_len,
                                     job.batch_size, job.full_length)
        config = job.record_config("unused.h5", **overrides)
        self.ngram_layers = config.ngram_layer_list(self.num_layers)
        self.orders = config.orders
        if kind == "plain":
            self.model.to(self.device)
        with torch.inference_mode():  # first call of the kernels, on a tiny input
            ids, mask = self.batches[0]
            archs.run_until(self.model, self.arch, ids[:1, :8].to(self.device), mask[:1, :8].to(self.device), 0)

    def run(self) -> dict:
        self.runs += 1
        self.last_counts = None
        gc.collect()
        rss_before = _rss_mb()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            torch.cuda.synchronize(self.device)
        peak_reset = _reset_peak_rss()
        start, cpu = time.perf_counter(), _cpu_s()
        extra = getattr(self, "_run_" + self.kind)()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
        result = {"seconds": seconds, "cpu_s": cpu, "peak_rss_mb": _peak_rss_mb(), "peak_rss_of_run": peak_reset,
                  "rss_before_mb": rss_before, **extra}
        if self.cuda:
            result["gpu_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        gc.collect()
        return result

    def _run_bare(self) -> dict:
        from fastneurons import architectures as archs
        from fastneurons.config import parse_bytes
        from fastneurons.offload import LayerStreamer

        last = self.num_layers - 1
        budget = None if self.job.gpu_memory is None else parse_bytes(self.job.gpu_memory)
        with LayerStreamer(self.model, self.arch, self.device, last, gpu_memory_bytes=budget), torch.inference_mode():
            for ids, mask in self.batches:
                archs.run_until(self.model, self.arch, ids.to(self.device), mask.to(self.device), last)
        return {}

    def _run_plain(self) -> dict:
        from fastneurons import architectures as archs
        from fastneurons.bench.plain_way import plain_record
        from fastneurons.ngrams.keys import pack_bits_for_vocab

        modules = {layer: archs.neuron_module(self.model, self.arch, layer) for layer in range(self.num_layers)}
        vocab = int(self.model.get_input_embeddings().weight.shape[0])
        self.last_counts = plain_record(self.model, modules, self.batches, max_positions=self.job.seq_len,
                                        ngram_layers=self.ngram_layers, orders=self.orders,
                                        pack_bits=pack_bits_for_vocab(vocab), stop_module=modules[self.num_layers - 1])
        return {}

    def _run_fastneurons(self) -> dict:
        from fastneurons import runner
        from fastneurons.store import runs_dir

        if self.last_store is not None:
            Path(self.last_store).unlink(missing_ok=True)
            shutil.rmtree(runs_dir(Path(self.last_store)), ignore_errors=True)
        out = Path(self.job.work_dir) / f"store-{os.getpid()}-{self.runs}.h5"
        self.phases.take()
        runner.record(self.job.record_config(out, **self.overrides), log=lambda *args: None)
        self.last_store = str(out)
        phases, phases_cpu = self.phases.take()
        return {"phases": phases, "phases_cpu": phases_cpu, "store_mb": out.stat().st_size / 2**20, "store": str(out)}

    def check(self, store: str) -> dict:
        """Compare this plain worker's last counts with a fastneurons store, counter by counter."""
        return compare_counts(store, self.last_counts)

    def close(self) -> None:
        if self.last_store is not None:
            Path(self.last_store).unlink(missing_ok=True)


def _worker_main(conn, kind: str, job: dict, overrides: dict) -> None:
    """Entry point of a worker process: set up, then answer ("run",) / ("check", path) / ("stop",)."""
    try:
        start = time.perf_counter()
        worker = _Worker(kind, Job(**job), overrides)
        conn.send({"ready": True, "setup_s": time.perf_counter() - start, "setup_rss_mb": _rss_mb()})
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        return
    while True:
        message = conn.recv()
        try:
            if message[0] == "run":
                conn.send(worker.run())
            elif message[0] == "check":
                conn.send(worker.check(message[1]))
            else:
                worker.close()
                conn.send({"stopped": True})
                return
        except BaseException:
            conn.send({"error": traceback.format_exc()})


_CONTEXT = None


def _context():
    """A forkserver context whose server has imported torch, transformers and fastneurons once."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["fastneurons.bench.end_to_end", "fastneurons.runner",
                                         "transformers.models.opt.modeling_opt",
                                         "transformers.models.llama.modeling_llama"])
    return _CONTEXT


class MethodWorker:
    """A worker process running one method of a job on request (parent side)."""

    def __init__(self, name: str, job: Job, timeout: float = 3600):
        kind, overrides = METHODS[name]
        self.name, self.timeout = name, timeout
        self.conn, child = _context().Pipe()
        self.process = _context().Process(target=_worker_main, args=(child, kind, dataclasses.asdict(job), overrides),
                                          daemon=True)
        self.process.start()
        child.close()
        self.setup = self._receive()

    def _receive(self) -> dict:
        if not self.conn.poll(self.timeout):
            self.process.kill()
            raise RuntimeError(f"{self.name} worker gave no answer in {self.timeout:.0f} s")
        try:
            answer = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"{self.name} worker died (exit code {self.process.exitcode}; "
                               "a negative code is a signal, -9 often means it ran out of memory)") from None
        if "error" in answer:
            raise RuntimeError(f"{self.name} worker failed:\n{answer['error']}")
        return answer

    def ask(self, *message) -> dict:
        self.conn.send(message)
        return self._receive()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.ask("stop")
            except (RuntimeError, OSError):
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# ----------------------------------------------------------------------------- comparison and summary

def compare_counts(store, plain) -> dict:
    """Whether a fastneurons store and plain-way counts are equal in every counter (first difference named)."""
    from fastneurons.store import open_counts

    def differs(name, a, b):
        a, b = np.asarray(a), np.asarray(b)
        return None if a.shape == b.shape and np.array_equal(a, b) else name

    checked = 0
    with open_counts(store) as counts:
        pairs = [("tokens", counts.tokens, plain.tokens), ("pos_seen", counts.pos_seen, plain.pos_seen)]
        for layer in counts.layers:
            pairs += [(f"active[{layer}]", counts.active(layer), plain.active[layer]),
                      (f"pos_active[{layer}]", counts.pos_active(layer), plain.pos_active[layer])]
        for k in counts.ngram_orders:
            pairs += [(f"ngram_seen[{k}].{part}", ours, theirs)
                      for part, ours, theirs in zip(("key", "count"), counts.ngram_seen(k), plain.ngram_seen[k])]
            for layer in counts.ngram_layers:
                pairs += [(f"ngram_active[{layer},{k}].{part}", ours, theirs) for part, ours, theirs in
                          zip(("key", "neuron", "count"), counts.ngram_active(layer, k), plain.ngram_active[(layer, k)])]
        for name, ours, theirs in pairs:
            checked += 1
            problem = differs(name, ours, theirs)
            if problem:
                return {"identical": False, "arrays_checked": checked, "first_difference": problem}
        rows = sum(len(counts.ngram_active(layer, k)[0]) for layer in counts.ngram_layers for k in counts.ngram_orders)
    return {"identical": True, "arrays_checked": checked, "first_difference": None, "ngram_rows": int(rows)}


def _median(values):
    return statistics.median(values) if values else None


def summarize(runs: dict) -> dict:
    """Medians over repeats of each method's wall and CPU time, phases and peak memory."""
    out = {}
    for name, results in runs.items():
        summary = {"seconds": [r["seconds"] for r in results], "median_s": _median([r["seconds"] for r in results]),
                   "cpu_s": [r["cpu_s"] for r in results], "median_cpu_s": _median([r["cpu_s"] for r in results]),
                   "peak_rss_mb": _median([r["peak_rss_mb"] for r in results]),
                   "peak_rss_max_mb": max(r["peak_rss_mb"] for r in results),
                   "peak_rss_of_run": all(r["peak_rss_of_run"] for r in results)}
        if "gpu_peak_mb" in results[0]:
            summary["gpu_peak_mb"] = max(r["gpu_peak_mb"] for r in results)
        if "phases" in results[0]:
            for key in ("phases", "phases_cpu"):
                names = sorted({p for r in results for p in r[key]})
                summary[key] = {p: _median([r[key].get(p, 0.0) for r in results]) for p in names}
                summary[key + "_runs"] = [r[key] for r in results]
            summary["store_mb"] = results[-1]["store_mb"]
            summary["load_model_first_s"] = results[0]["phases"].get("load_model", 0.0)
        out[name] = summary
    return out


def bench_end_to_end(job: Job, methods=("bare", "plain", "fastneurons", "fastneurons_dense"), repeats: int = 3,
                     check: bool = True, log=print) -> dict:
    """Run each method ``repeats`` times, taking turns, each in its own worker; check identical counts."""
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    workers, runs, setups = {}, {name: [] for name in methods}, {}
    try:
        for name in methods:
            workers[name] = MethodWorker(name, job)
            setups[name] = workers[name].setup
        for round_index in range(repeats):
            for name in methods:
                result = workers[name].ask("run")
                runs[name].append(result)
                log(f"    round {round_index + 1}/{repeats} {name:18s} {result['seconds']:7.2f} s  "
                    f"peak RSS {result['peak_rss_mb']:7.0f} MiB")
        identical = None
        if check and "plain" in workers and "fastneurons" in workers:
            identical = workers["plain"].ask("check", runs["fastneurons"][-1]["store"])
            log(f"    identical counts (fastneurons vs plain way): {identical['identical']}"
                + ("" if identical["identical"] else f" (first difference: {identical['first_difference']})"))
    finally:
        for worker in workers.values():
            worker.close()
    return {"job": dataclasses.asdict(job), "repeats": repeats, "setup": setups,
            "methods": summarize(runs), "identical": identical}
