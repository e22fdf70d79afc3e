"""One method of an end-to-end Job run in its own process: measured (time, CPU, peak RSS, phases), counts checked.
Workers fork from a server that has already imported torch and transformers, so each peak is its own."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import os
import resource
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from fastneurons.bench.beside import BareBeside
from fastneurons.bench.workloads import Job, _plan_batches
from fastneurons.host_memory import hold_freed_memory

METHODS = {  # name -> (what runs, RecordConfig overrides)
    "bare": ("bare", {}),
    "plain": ("plain", {}),
    "fastneurons": ("fastneurons", {"ngrams": "exact"}),  # exact tables: compared with the plain way's
    "fastneurons_dense": ("fastneurons", {"ngram_layers": ["none"]}),
    "fastneurons_bounded": ("fastneurons", {"ngrams": "bounded"}),
}


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
            with self.timed(phase):
                return original(*args, **kwargs)

        timed.__wrapped__ = original
        setattr(owner, name, staticmethod(timed) if static else timed)

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Add the wall and CPU time of the block to ``phase`` (after the GPU's queued work)."""
        start, cpu = time.perf_counter(), _cpu_s()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
            self.cpu[phase] = self.cpu.get(phase, 0.0) + _cpu_s() - cpu

    def take(self) -> tuple:
        """(wall seconds, CPU seconds) per phase since the last take."""
        taken = self.seconds, self.cpu
        self.seconds, self.cpu = {}, {}
        return taken


def _instrument_runner(cuda: bool) -> _Phases:
    """Time record()'s parts: setup, forward (with the hooks inside), per-chunk work, store writes."""
    from fastneurons.models import architectures
    from fastneurons.ngrams import bounded
    from fastneurons.recording import counter, runner, second_pass, taps

    phases = _Phases(cuda)
    phases.wrap(runner, "load_model", "load_model")
    phases.wrap(runner, "plan_corpus", "plan_corpus")
    phases.wrap(runner, "build_header", "header")
    phases.wrap(architectures, "run_until", "forward")
    phases.wrap(counter.CounterHandle, "_count", "forward.hooks")
    phases.wrap(counter, "count_activations_checked", "forward.hooks.kernel")
    phases.wrap(taps.NgramAccumulator, "add", "forward.hooks.ngram_add")
    phases.wrap(bounded.SummaryAccumulator, "fold", "forward.hooks.summary_fold")
    phases.wrap(second_pass, "second_pass", "second_pass")
    phases.wrap(taps.LayerTaps, "set_batch", "set_batch")
    phases.wrap(taps.LayerTaps, "take_tables", "ngram_tables")
    phases.wrap(taps.LayerTaps, "totals", "totals")
    phases.wrap(runner.CountsWriter, "create", "store.create", static=True)
    phases.wrap(runner.CountsWriter, "write_run", "store.write_run")
    phases.wrap(runner.CountsWriter, "_snapshot", "store.commit")  # commit(final=True) calls finalize instead
    phases.wrap(runner.CountsWriter, "finalize", "store.finalize")
    return phases


def _load_once() -> dict:
    """Make the runner's load_model remember the model it loaded (later records skip the load); returns
    its cache {key: LoadedModel}."""
    from fastneurons.recording import runner

    original, cache = runner.load_model, {}

    def load(spec, **kwargs):
        key = (str(spec), repr(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(spec, **kwargs)
        return cache[key]

    runner.load_model = load
    return cache


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
        from fastneurons.models import architectures as archs
        from fastneurons.models.loading import load_model

        self.kind, self.job, self.overrides = kind, job, overrides
        if job.threads:
            torch.set_num_threads(job.threads)
        self.device = torch.device(job.device)
        self.cuda = self.device.type == "cuda"
        # record sets this itself on the CPU; every method gets it, the bare forward included (host_memory.py)
        self.host_memory = hold_freed_memory() if self.device.type == "cpu" else None
        _warm_up_counting()
        self.last_store, self.last_counts, self.runs = None, None, 0
        if kind == "fastneurons":
            if job.reuse_model or job.bare_in_worker:
                self.loaded = _load_once()
            self.phases = _instrument_runner(self.cuda)
            if job.bare_beside:
                BareBeside.install(self.phases)
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
        if self.kind != "bare" and self.job.bare_in_worker:
            result["bare_here_s"] = self._bare_here()
        gc.collect()
        return result

    def _run_bare(self) -> dict:
        _bare_forward(self.model, self.arch, self.batches, self.job, self.device)
        return {}

    def _bare_here(self) -> float:
        """Seconds of a bare forward, in this process, of the model the method just ran (for record: the
        one it loaded; batches planned once): the same weights in the same memory as the method's forward."""
        if self.kind == "plain":
            model, arch, batches = self.model, self.arch, self.batches
        else:
            (loaded,) = self.loaded.values()
            model, arch = loaded.model, loaded.arch
            if getattr(self, "batches", None) is None:
                self.batches = _plan_batches(model, loaded.tokenizer, self.job.corpus, self.job.tokens,
                                             self.job.seq_len, self.job.batch_size, self.job.full_length)
            batches = self.batches
        if any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
            raise RuntimeError(f"{self.kind} left hooks on its model: a forward of it would not be bare")
        gc.collect()
        start = time.perf_counter()
        _bare_forward(model, arch, batches, self.job, self.device)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _run_plain(self) -> dict:
        from fastneurons.models import architectures as archs
        from fastneurons.bench.plain_way import plain_record
        from fastneurons.ngrams.keys import pack_bits_for_vocab

        modules = {layer: archs.neuron_module(self.model, self.arch, layer) for layer in range(self.num_layers)}
        vocab = int(self.model.get_input_embeddings().weight.shape[0])
        self.last_counts = plain_record(self.model, modules, self.batches, max_positions=self.job.seq_len,
                                        ngram_layers=self.ngram_layers, orders=self.orders,
                                        pack_bits=pack_bits_for_vocab(vocab), stop_module=modules[self.num_layers - 1])
        return {}

    def _run_fastneurons(self) -> dict:
        from fastneurons.recording import runner
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
        from fastneurons.bench.compare import compare_counts

        return compare_counts(store, self.last_counts)

    def close(self) -> None:
        if self.last_store is not None:
            Path(self.last_store).unlink(missing_ok=True)


def _bare_forward(model, arch, batches, job: Job, device) -> None:
    """The forward of every batch through the last layer, nothing counted: the limit every method is held to."""
    from fastneurons.config import parse_bytes
    from fastneurons.models import architectures as archs
    from fastneurons.models.offload import LayerStreamer

    last = archs.num_layers(model, arch) - 1
    budget = None if job.gpu_memory is None else parse_bytes(job.gpu_memory)
    with LayerStreamer(model, arch, device, last, gpu_memory_bytes=budget), torch.inference_mode():
        for ids, mask in batches:
            archs.run_until(model, arch, ids.to(device), mask.to(device), last)


def _worker_main(conn, kind: str, job: dict, overrides: dict) -> None:
    """Entry point of a worker process: set up, then answer ("run",) / ("check", path) / ("stop",)."""
    try:
        start = time.perf_counter()
        worker = _Worker(kind, Job(**job), overrides)
        conn.send({"ready": True, "setup_s": time.perf_counter() - start, "setup_rss_mb": _rss_mb(),
                   "host_memory": worker.host_memory})
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
        _CONTEXT.set_forkserver_preload(["fastneurons.bench.workers", "fastneurons.recording.runner",
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
