"""The bare forward on the CPU with glibc's default malloc and with `hold_freed_memory` (host_memory.py):
seconds, minor page faults and system time of the same forward, each in a fresh process.

Usage: PYTHONPATH=src python benchmarks/bench_host_memory.py [--tokens 32k] [--rounds 4] [--json out.json]
The model is OPT-125m's shape with random weights (the bare forward's cost does not depend on them),
batches of 2 x 512 random ids. Each round runs both settings, in alternating order (ABBA), so a slow
stretch of a shared machine falls on both. Prints a markdown table (ratios) for benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("default", "held")


def _child(args) -> dict:
    """One bare forward over ``args.tokens`` tokens in this process, under ``args.child``."""
    import torch

    from fastneurons.host_memory import hold_freed_memory
    from fastneurons.models import architectures as archs
    from fastneurons.models.loading import load_model

    held = hold_freed_memory() if args.child == "held" else None
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=torch.float32)
    model, arch = loaded.model, loaded.arch
    last = archs.num_layers(model, arch) - 1
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, 50000, (args.batch_size, args.seq_len), generator=generator)
               for _ in range(max(1, args.tokens // (args.batch_size * args.seq_len)))]
    mask = torch.ones(args.batch_size, args.seq_len, dtype=torch.long)
    with torch.inference_mode():
        archs.run_until(model, arch, batches[0][:1, :8], mask[:1, :8], last)  # first call of the kernels
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for ids in batches:
            archs.run_until(model, arch, ids, mask, last)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"setting": args.child, "held": held, "seconds": seconds, "minor_faults": after.ru_minflt - before.ru_minflt,
            "system_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime,
            "tokens": len(batches) * args.batch_size * args.seq_len}


def _run(args, setting: str) -> dict:
    command = [sys.executable, __file__, "--child", setting, "--model", args.model, "--tokens", str(args.tokens),
               "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _table(rounds: list) -> str:
    rows = ["| round | default / held (time) | faults default | faults held | system s default | system s held |",
            "|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        d, h = r["default"], r["held"]
        rows.append(f"| {i} | {d['seconds'] / h['seconds']:.3f} | {d['minor_faults']:,} | {h['minor_faults']:,} "
                    f"| {d['system_s']:.2f} | {h['system_s']:.2f} |")
    ratios = [r["default"]["seconds"] / r["held"]["seconds"] for r in rounds]
    spread = {s: max(r[s]["seconds"] for r in rounds) / min(r[s]["seconds"] for r in rounds) for s in SETTINGS}
    rows.append(f"\nmedian default / held {statistics.median(ratios):.3f}; slowest / fastest round: "
                f"default {spread['default']:.3f}, held {spread['held']:.3f}")
    return "\n".join(rows)


def main(argv=None) -> None:
    from fastneurons.config import parse_count

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: OPT-125m's shape, random weights)")
    parser.add_argument("--tokens", type=parse_count, default=32768)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--json")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from transformers import OPTForCausalLM

            from fastneurons.bench.workloads import opt_config

            args.model = str(Path(tmp) / "opt-125m")
            OPTForCausalLM(opt_config("125m")).save_pretrained(args.model)
        rounds = []
        for i in range(args.rounds):
            order = SETTINGS if i % 2 == 0 else SETTINGS[::-1]
            rounds.append({setting: _run(args, setting) for setting in order})
            print(f"round {i + 1}: " + ", ".join(f"{s} {rounds[-1][s]['seconds']:.2f} s "
                                                  f"{rounds[-1][s]['minor_faults']:,} faults" for s in SETTINGS),
                  flush=True)
    print(_table(rounds))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
