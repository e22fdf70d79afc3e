"""The `fastneurons` command: the only module that parses arguments.

Each subcommand's flags are generated from its dataclass in ``config.py`` (help text, defaults and
types come from the fields), so the CLI, the Python API and the stored metadata cannot drift apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import typing

from fastneurons import config as cfg

_COMMANDS = {}


def command(name, config_cls, help):
    """Register ``func(config)`` as subcommand ``name`` taking the fields of ``config_cls``."""
    def wrap(func):
        _COMMANDS[name] = (config_cls, help, func)
        return func
    return wrap


def _flag(field) -> str:
    return "--" + field.name.replace("_", "-")


def _base_type(tp):
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations are strings under `from __future__ import annotations`
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _order_map(text: str):
    """'1=5' -> (1, 5): one m_k entry of --max-coverage."""
    order, _, value = text.partition("=")
    if not (order.strip().isdigit() and value.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected K=M, e.g. 1=5 3=50")
    return int(order), int(value)


_TYPES = {"order_map": _order_map}


def _nested_class(field):
    if field.metadata.get("nested") == "AnalysisSettings":
        from fastneurons.analysis.pipeline import AnalysisSettings

        return AnalysisSettings
    return None


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """Add one flag (or positional) per field of ``config_cls`` (nested settings flattened)."""
    for field in dataclasses.fields(config_cls):
        nested = _nested_class(field)
        if nested is not None:
            add_dataclass_arguments(parser.add_argument_group(nested.__name__), nested)
            continue
        meta = dict(field.metadata)
        help_text = meta.get("help", "")
        tp = _base_type(field.type)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (field.default if field.default is not dataclasses.MISSING
                                          else field.default_factory())
        if tp is bool:
            parser.add_argument(_flag(field), default=default, action=argparse.BooleanOptionalAction,
                                help=help_text)
            continue
        kwargs = {"help": help_text + ("" if required or default is None else f" (default: {_show(default)})")}
        if "nargs" in meta:
            kwargs["nargs"] = meta["nargs"]
            kwargs["type"] = _TYPES.get(meta.get("type"), meta.get("type", str))
        elif tp in (int, float):
            kwargs["type"] = tp
        if meta.get("positional"):
            parser.add_argument(field.name, **kwargs)
            continue
        flags = [_flag(field)] + ([meta["flag"]] if "flag" in meta else [])
        parser.add_argument(*flags, dest=field.name, required=required, default=default, **kwargs)


def _show(value) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastneurons", description=(
        "Profile every FFN neuron of a language model: dead, n-gram and positional neurons "
        "(Voita et al., 2023)."))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (config_cls, help_text, _) in _COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        if config_cls is not None:
            add_dataclass_arguments(child, config_cls)
    return parser


def _config_from(args, config_cls):
    values = {}
    for field in dataclasses.fields(config_cls):
        nested = _nested_class(field)
        if nested is not None:
            values[field.name] = _config_from(args, nested)
            continue
        value = getattr(args, field.name)
        if field.metadata.get("type") == "order_map" and isinstance(value, list):
            value = {**field.default_factory(), **dict(value)}
        elif isinstance(value, list) and field.metadata.get("nargs") and isinstance(field.default, tuple):
            value = tuple(value)
        values[field.name] = value
    config = config_cls(**values)
    return config.validate() if hasattr(config, "validate") else config


@command("record", cfg.RecordConfig, "record SPEC §2 counts of a model over a corpus into an HDF5 store")
def _record(config):
    from fastneurons.recording.runner import record

    path = record(config)
    print(f"wrote {path}")


@command("plan", cfg.PlanConfig, "predict FLOPs, weight traffic, block size, time and memory of a recording "
                                 "from the model's config alone")
def _plan(config):
    from fastneurons.plan import plan_command

    print(plan_command(config))


@command("second-pass", cfg.SecondPassConfig, "bounded n-gram mode: count a store's candidate pairs exactly")
def _second_pass(config):
    from fastneurons.recording.second_pass import second_pass

    path = second_pass(config)
    print(f"wrote {path}")


@command("merge", cfg.MergeConfig, "add compatible counts stores (shards, or other corpora) into one")
def _merge(config):
    from fastneurons.store import merge_stores

    path = merge_stores(config.inputs, config.out, cfg.parse_bytes(config.ngram_memory), overwrite=config.overwrite)
    print(f"wrote {path}")


@command("analyze", cfg.AnalyzeConfig, "turn counts into the paper's findings: results.json, CSV, figures, report.html")
def _analyze(config):
    from fastneurons.reporting.analyze import analyze

    path = analyze(config)
    print(f"report: {path}")


@command("demo", cfg.DemoConfig, "record + analyze + report on a planted OPT and Python's own sources (no download)")
def _demo(config):
    from fastneurons.demo.command import run_demo

    path = run_demo(config)
    print(f"report: {path}")


@command("bench", cfg.BenchConfig, "measure fastneurons against the plain way (also: python -m fastneurons.bench)")
def _bench(config):
    from fastneurons.bench.__main__ import run_bench

    run_bench(config)


@command("info", cfg.InfoConfig, "print version, compiled backends, threads and GPUs, or what counts stores hold")
def _info(config):
    from fastneurons.info import describe_store, format_info, format_lines

    if not config.stores:
        print(format_info())
    for i, path in enumerate(config.stores):
        print(("\n" if i else "") + format_lines(describe_store(path)))


@command("show", cfg.ShowConfig, "everything the analyses say about one neuron: frequency, n-grams, positions, tokens")
def _show_neuron(config):
    from fastneurons.reporting.neuron_text import show_neuron

    print(show_neuron(config))


@command("export", cfg.ExportConfig, "write a store's dense counters for other tools: LAPE, PowerInfer, numpy (.npz)")
def _export(config):
    from fastneurons.reporting.export import export
    from fastneurons.store import open_counts

    with open_counts(config.store) as counts:
        paths = export(counts, config.format, config.out)
    print(f"wrote {len(paths)} file(s) into {config.out}")


@command("lape", cfg.LapeConfig, "domain-specific neurons by LAPE's entropy rule (Tang et al. 2024) on per-domain counts")
def _lape(config):
    from fastneurons.reporting.export import lape_report

    print(lape_report(config))
class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the command stops cleanly, keeping what it committed."""


def _stop(signum, frame):
    """SIGINT / SIGTERM: stop where raising is safe (never inside HDF5's callbacks or a finalizer)."""
    from fastneurons.store.atomic import deliver_later, unsafe_to_raise

    if unsafe_to_raise(frame):
        deliver_later(signum)
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config_cls, _, func = _COMMANDS[args.command]
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        config = _config_from(args, config_cls) if config_cls is not None else None
        func(config)
    except KeyboardInterrupt as err:
        print(f"fastneurons {args.command}: {'terminated' if isinstance(err, Terminated) else 'interrupted'}; "
              "everything committed so far is kept (a recording: continue it with --resume)", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError) as err:
        if getattr(args, "debug", False):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"fastneurons {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
