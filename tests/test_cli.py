"""`fastneurons.cli`: the argparse flags generated from the config dataclasses, and `main`.

Every field of every command's dataclass (AnalysisSettings flattened into `analyze`) has exactly one
option or positional with the dataclass's default, so a minimal command line gives the same config as
the dataclass built in Python; bool fields take --x/--no-x, list fields take several values, order
maps read K=M. `main` turns bad input into `fastneurons <cmd>: error: ...` and exit code 2, and `info`
describes the installation or hand-made counts stores (no model is loaded anywhere here).
"""
import argparse
import dataclasses
import os

import numpy as np
import pytest

import fastneurons
from fastneurons.analysis.detectors import DEFAULT_MAX_COVERAGE
from fastneurons.analysis.pipeline import AnalysisSettings
from fastneurons.cli import _COMMANDS, _config_from, build_parser, main
from fastneurons.config import (AnalyzeConfig, BenchConfig, DemoConfig, ExportConfig, InfoConfig, LapeConfig,
                                MergeConfig, PlanConfig, RecordConfig, SecondPassConfig, ShowConfig)
from fastneurons.info import _ranges
from fastneurons.store import Corpus, CountsWriter, DenseCounts, Header, StoreLock, open_counts

CLASSES = {"record": RecordConfig, "merge": MergeConfig, "analyze": AnalyzeConfig, "demo": DemoConfig,
           "bench": BenchConfig, "info": InfoConfig, "show": ShowConfig, "export": ExportConfig, "lape": LapeConfig,
           "plan": PlanConfig, "second-pass": SecondPassConfig}
# the least each command needs, and the config it must give (built directly in Python)
MINIMAL = {
    "record": (["--model", "m", "--corpus", "c.txt", "--out", "o.h5"],
               RecordConfig(model="m", corpus=["c.txt"], out="o.h5")),
    "merge": (["a.h5", "b.h5", "-o", "m.h5"], MergeConfig(inputs=["a.h5", "b.h5"], out="m.h5")),
    "analyze": (["c.h5"], AnalyzeConfig(counts=["c.h5"], settings=AnalysisSettings())),
    "demo": ([], DemoConfig()),
    "bench": ([], BenchConfig()),
    "info": ([], InfoConfig()),
    "show": (["c.h5", "0", "1"], ShowConfig(store="c.h5", layer=0, neuron=1, settings=AnalysisSettings())),
    "export": (["c.h5", "out"], ExportConfig(store="c.h5", out="out")),
    "lape": (["c.h5"], LapeConfig(store="c.h5")),
    "plan": (["--model", "m"], PlanConfig(model="m")),
    "second-pass": (["s.h5"], SecondPassConfig(store="s.h5")),
}


def parse(command, *extra):
    """The config `fastneurons COMMAND <minimal args> EXTRA...` gives."""
    args = build_parser().parse_args([command, *MINIMAL[command][0], *extra])
    assert args.command == command
    return _config_from(args, CLASSES[command])


def subparser(command) -> argparse.ArgumentParser:
    parser = build_parser()
    sub, = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


def flat_fields(config_cls):
    """The fields that become flags: nested AnalysisSettings flattened in place."""
    for field in dataclasses.fields(config_cls):
        if field.metadata.get("nested"):
            assert field.metadata["nested"] == "AnalysisSettings"
            yield from dataclasses.fields(AnalysisSettings)
        else:
            yield field


def field_default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def value_of(config, name):
    """config.NAME, or config.settings.NAME for the flattened analysis settings."""
    if any(f.name == name for f in dataclasses.fields(config)):
        return getattr(config, name)
    return getattr(config.settings, name)


def test_every_command_is_registered_with_its_dataclass():
    assert {name: cls for name, (cls, _, _) in _COMMANDS.items()} == CLASSES


@pytest.mark.parametrize("command", CLASSES)
def test_each_field_has_exactly_one_option_with_its_default(command):
    actions = [a for a in subparser(command)._actions if not isinstance(a, argparse._HelpAction)]
    fields = list(flat_fields(CLASSES[command]))
    assert sorted(a.dest for a in actions) == sorted(f.name for f in fields)  # one each, nothing else
    by_dest = {a.dest: a for a in actions}
    for field in fields:
        action, meta, default = by_dest[field.name], field.metadata, field_default(field)
        assert meta.get("help") and meta["help"] in (action.help or ""), field.name
        if meta.get("positional"):
            assert action.option_strings == [], field.name
        else:
            flag = "--" + field.name.replace("_", "-")
            assert flag in action.option_strings, field.name
            if "flag" in meta:
                assert meta["flag"] in action.option_strings
            assert action.required == (default is dataclasses.MISSING), field.name
            if default is not dataclasses.MISSING:
                assert action.default == default, field.name
        if isinstance(action, argparse.BooleanOptionalAction):
            assert isinstance(default, bool) and "--no-" + field.name.replace("_", "-") in action.option_strings
        else:
            assert action.nargs == meta.get("nargs"), field.name


@pytest.mark.parametrize("command", CLASSES)
def test_minimal_command_line_equals_the_dataclass_built_in_python(command):
    config, expected = parse(command), MINIMAL[command][1].validate()
    assert type(config) is type(expected)
    for field in dataclasses.fields(expected):
        assert getattr(config, field.name) == getattr(expected, field.name), field.name
    assert config == expected


@pytest.mark.parametrize("command", CLASSES)
def test_help_renders_every_flag(command):
    text = subparser(command).format_help()
    for field in flat_fields(CLASSES[command]):
        if not field.metadata.get("positional"):
            assert "--" + field.name.replace("_", "-") in text


@pytest.mark.parametrize("command, name", [(c, f.name) for c in CLASSES for f in flat_fields(CLASSES[c])
                                           if field_default(f) is not dataclasses.MISSING
                                           and isinstance(field_default(f), bool)])
def test_bool_fields_take_x_and_no_x(command, name):
    flag = name.replace("_", "-")
    assert value_of(parse(command, "--" + flag), name) is True
    assert value_of(parse(command, "--no-" + flag), name) is False
    assert value_of(parse(command, "--no-" + flag, "--" + flag), name) is True  # the last one wins


def test_record_lists_and_types():
    config = parse("record", "--corpus", "code=a.txt", "b.jsonl", "--layers", "2", "0", "--orders", "3", "1", "3",
                   "--ngram-layers", "none", "--seq-len", "128", "--threshold", "-0.5", "--commit-seconds", "0",
                   "--bos-id", "2", "--threads", "3", "--tokens", "5M", "--shard", "1/2", "--gpu-memory", "4GiB")
    assert config.corpus == ["code=a.txt", "b.jsonl"]  # the later --corpus replaces the minimal one
    assert config.layers == [2, 0] and config.orders == [1, 3] and config.ngram_layers == ["none"]
    assert config.ngram_layer_list(4) == []
    assert config.seq_len == 128 and config.threshold == -0.5 and config.commit_seconds == 0.0
    assert config.bos_id == 2 and config.threads == 3 and config.max_tokens == 5_000_000
    assert config.shard_index == (1, 2) and config.gpu_memory == "4GiB"
    assert parse("record", "--ngram-layers", "1", "0").ngram_layer_list(8) == [0, 1]


def test_merge_takes_inputs_and_short_or_long_out():
    args = build_parser().parse_args(["merge", "a.h5", "b.h5", "c.h5", "-o", "m.h5"])
    assert _config_from(args, MergeConfig) == MergeConfig(inputs=["a.h5", "b.h5", "c.h5"], out="m.h5")
    args = build_parser().parse_args(["merge", "a.h5", "b.h5", "--out", "n.h5", "--ngram-memory", "1G"])
    assert _config_from(args, MergeConfig) == MergeConfig(inputs=["a.h5", "b.h5"], out="n.h5", ngram_memory="1G")


def test_analyze_settings_flags_land_in_config_settings():
    config = parse("analyze", "--coverage", "0.9", "--max-coverage", "1=7", "--k-top", "3", "--center",
                   "--control-size", "4", "--log-base", "2", "--bins", "1", "10", "100", "--orders", "1", "2",
                   "--formats", "pdf", "--out", "rep", "--no-suppression", "--per-neuron")
    settings = config.settings
    assert isinstance(settings, AnalysisSettings)
    assert settings.coverage == 0.9 and settings.max_coverage == {1: 7, 2: 50, 3: 50}
    assert settings.k_top == 3 and settings.center is True and settings.control_size == 4
    assert settings.log_base == 2.0
    assert settings.bins == (1, 10, 100) and settings.orders == (1, 2)  # tuples like the dataclass defaults
    assert config.formats == ["pdf"] and config.out == "rep" and config.suppression is False and config.per_neuron
    assert dataclasses.replace(AnalysisSettings(), coverage=0.9, max_coverage={1: 7, 2: 50, 3: 50}, k_top=3,
                               center=True, control_size=4, log_base=2.0, bins=(1, 10, 100),
                               orders=(1, 2)) == settings


def test_max_coverage_merges_into_the_defaults_without_changing_them():
    assert DEFAULT_MAX_COVERAGE == {1: 5, 2: 50, 3: 50}
    assert parse("analyze").settings.max_coverage == DEFAULT_MAX_COVERAGE
    assert parse("analyze", "--max-coverage", "2=10", "4=3").settings.max_coverage == {1: 5, 2: 10, 3: 50, 4: 3}
    assert parse("analyze", "--max-coverage", "1=7").settings.max_coverage == {1: 7, 2: 50, 3: 50}
    assert DEFAULT_MAX_COVERAGE == {1: 5, 2: 50, 3: 50}
    assert AnalysisSettings().max_coverage == {1: 5, 2: 50, 3: 50}
    assert parse("analyze").settings.max_coverage == {1: 5, 2: 50, 3: 50}


@pytest.mark.parametrize("value", ["1:5", "a=5", "1=", "=5", "1=x", "1=5=6", "1=-5"])
def test_malformed_max_coverage_is_an_argparse_error(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("analyze", "--max-coverage", value)
    assert exit_.value.code == 2
    assert "expected K=M" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["record", "--corpus", "c.txt", "--out", "o.h5"], "--model"),
    (["record", "--model", "m", "--out", "o.h5"], "--corpus"),
    (["record", "--model", "m", "--corpus", "--out", "o.h5"], "--corpus"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--seq-len", "abc"], "--seq-len"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--layers", "x"], "--layers"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--bogus"], "--bogus"),
    (["merge", "a.h5", "b.h5"], "-o"),
    (["analyze"], "counts"),
    (["analyze", "c.h5", "--coverage", "high"], "--coverage"),
    (["nonsense"], "nonsense"),
    ([], "command"),
])
def test_argparse_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, reason", [
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--dtype", "int8"], "--dtype 'int8'"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--batch-size", "0"], "--batch-size"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--tokens", "0"], "positive whole"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--shard", "4/4"], "--shard"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "o.h5", "--device", "tpu"], "--device"),
    (["merge", "a.h5", "-o", "m.h5"], "at least two"),
    (["analyze", "c.h5", "--formats", "gif"], "--formats"),
    (["analyze", "c.h5", "--coverage", "1.5"], "coverage must be in (0, 1]"),
    (["analyze", "c.h5", "--max-coverage", "1=0"], "max_coverage"),
    (["demo", "--seq-len", "8"], "--seq-len"),
])
def test_main_reports_bad_values_and_returns_2(argv, reason, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"fastneurons {argv[0]}: error: ") and reason in err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_info_without_stores_describes_the_installation(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    keys = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.strip()}
    assert keys["version"] == fastneurons.__version__
    assert "torch" in keys and "backends" in keys


def test_info_on_a_missing_file_returns_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastneurons info: error: ") and "no such counts file" in err


NEURONS, POSITIONS, UNITS = 5, 6, 4


def write_store(path, layers, ngram_layers, labels, domain_tokens, units, final=True, positions=True):
    """A store written through the store API by hand (as in tests/test_store.py), no model involved."""
    meta = {"architecture": "opt", "model_config": {"hidden_size": 16, "ffn_dim": NEURONS},
            "model": {"spec": "hand-made"}, "compute_dtype": "float32", "threshold": 0.0,
            "neuron_definition": "opt: fc1(x)[n] > 0.0", "count_bos": False, "pack_bits": 16,
            "num_neurons": NEURONS, "max_positions": POSITIONS, "layers": list(layers),
            "ngram_layers": list(ngram_layers), "orders": [1, 2], "positions": positions, "seq_len": POSITIONS,
            "full_length": False, "batch_size": 2, "unit_batches": 1}
    corpus = Corpus("fp", {"files": ["a.txt"], "fingerprint": "fp"}, np.zeros(UNITS, bool), len(labels))
    header = Header(meta, None, [corpus], list(labels))
    dense = DenseCounts.zeros(len(layers), NEURONS, POSITIONS, len(labels), positions=positions)
    dense.domain_tokens[:] = domain_tokens
    dense.tokens = int(sum(domain_tokens))
    CountsWriter.create(path, header, 1 << 20).commit(dense, 0, list(units), final=final)
    return path


def info_blocks(text):
    """`info` output: one {key: value} per store, blocks separated by a blank line."""
    return [{line.split()[0]: line.split(None, 1)[1] for line in block.splitlines()}
            for block in text.strip("\n").split("\n\n")]


def test_info_describes_stores(tmp_path, capsys):
    full = write_store(tmp_path / "full.h5", [3, 7], [7], ["code", "prosé"], [1000, 234], range(UNITS))
    part = write_store(tmp_path / "part.h5", [0, 1, 2, 5, 7, 8], [], ["web"], [99], [1], final=False,
                       positions=False)
    assert main(["info", str(full), str(part)]) == 0
    first, second = info_blocks(capsys.readouterr().out)

    assert first["store"] == str(full) and first["state"] == "complete"
    assert first["units"] == "4/4" and first["tokens"] == "1234"
    assert first["model"] == "hand-made" and first["architecture"] == "opt"
    assert first["neuron_definition"] == "opt: fc1(x)[n] > 0.0" and first["neurons_per_layer"] == str(NEURONS)
    assert first["layers"] == "3, 7" and first["ngram_layers"] == "7" and first["orders"] == "1, 2"
    assert first["positions"] == f"{POSITIONS} (pos_active recorded)"
    assert first["domains"] == "code (1000 tokens), prosé (234 tokens)"
    assert first["size"].endswith(" MiB")

    assert second["store"] == str(part) and second["state"].startswith("partial")
    assert "--resume" in second["state"] and second["units"] == "1/4" and second["tokens"] == "99"
    assert second["layers"] == "0-2, 5, 7-8" and second["ngram_layers"] == "none" and second["orders"] == "none"
    assert second["positions"] == f"{POSITIONS} (no pos_active)"
    assert second["domains"] == "web (99 tokens)"


def test_info_on_a_store_and_a_missing_file_returns_2(tmp_path, capsys):
    store = write_store(tmp_path / "s.h5", [0], [0], ["d"], [10], [0, 1])
    assert main(["info", str(store), str(tmp_path / "nope.h5")]) == 2
    out, err = capsys.readouterr()
    assert "no such counts file" in err and info_blocks(out)[0]["units"] == "2/4"


@pytest.mark.parametrize("values, text", [
    ([0, 1, 2, 5, 7, 8], "0-2, 5, 7-8"), ([], ""), ([3], "3"), ([3, 7], "3, 7"), ([2, 1, 0], "0-2"),
    ((8, 7, 5, 0, 1, 2), "0-2, 5, 7-8"), ([0, 2, 4], "0, 2, 4"), ([4, 5], "4-5"),
])
def test_ranges(values, text):
    assert _ranges(values) == text


@pytest.mark.parametrize("argv, message", [
    (["--skip", "nope"], "--skip ['nope']: choose from"),
    (["--tokens", "100"], "must be a multiple of 2 x --seq-len"),
    (["--densities", "dense"], "--densities ['dense']: choose from"),
    (["--model-config", "7b"], "--model-config 7b: choose from"),
])
def test_bench_flags_are_parsed_here_and_bad_ones_exit_2(capsys, argv, message):
    from fastneurons.bench.__main__ import main as bench_main

    assert bench_main(argv) == 2  # python -m fastneurons.bench goes through cli.main
    assert message in capsys.readouterr().err
@pytest.mark.parametrize("argv, reason", [
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "{tmp}/o.h5", "--threshold", "nan"], "--threshold nan"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "{tmp}/o.h5", "--commit-seconds", "nan"], "--commit-seconds"),
    (["record", "--model", "m", "--corpus", "c.txt", "--out", "{tmp}/o.h5", "--commit-seconds", "inf"], "--commit-seconds"),
    (["analyze", "c.h5", "--out", "{tmp}/report", "--smooth", "nan"], "--smooth nan"),
    (["analyze", "c.h5", "--out", "{tmp}/report", "--smooth", "inf"], "--smooth inf"),
    (["analyze", "c.h5", "--out", "{tmp}/report", "--mi-threshold", "nan"], "--mi-threshold nan"),
])
def test_non_finite_settings_are_refused_before_any_file_is_touched(tmp_path, argv, reason, capsys):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert reason in err and "finite" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no store, no half report folder


def test_merge_refuses_an_existing_output_unless_overwrite_and_never_an_input(tmp_path, capsys):
    """`merge -o` used to replace any existing file (a store, notes.txt) silently, exit 0."""
    a = write_store(tmp_path / "a.h5", [0], [], ["d"], [10], [0, 1])
    b = write_store(tmp_path / "b.h5", [0], [], ["d"], [5], [2])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert main(["merge", str(a), str(b), "-o", str(notes)]) == 2
    assert f"{notes} exists" in capsys.readouterr().err and notes.read_text() == "my notes"
    before = a.read_bytes()
    assert main(["merge", str(a), str(b), "-o", str(a), "--overwrite"]) == 2
    assert "one of its inputs" in capsys.readouterr().err and a.read_bytes() == before
    link = tmp_path / "a-link.h5"
    os.link(a, link)  # another name of an input is that input
    assert main(["merge", str(a), str(b), "-o", str(link), "--overwrite"]) == 2
    assert "one of its inputs" in capsys.readouterr().err and a.read_bytes() == before
    assert main(["merge", str(a), str(b), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["merge", str(a), str(b), "-o", str(notes), "--overwrite"]) == 0
    with open_counts(notes) as counts:
        assert counts.complete and counts.units_held == 3 and counts.tokens == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-link.h5", "a.h5", "b.h5", "notes.txt"]  # no lock left


def test_record_names_an_out_that_is_a_directory_or_exists(tmp_path, capsys):
    """An --out that is a directory used to get "exists: pass --resume"; both are refused before the model loads."""
    base = ["record", "--model", str(tmp_path / "no-model"), "--corpus", "c.txt", "--out"]
    (tmp_path / "c.txt").write_text("text")
    assert main(base + [str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(base + [str(tmp_path), "--resume"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(base + [str(tmp_path / "c.txt" / "o.h5")]) == 2  # a file where a folder should be
    assert "is a file, not a folder" in capsys.readouterr().err
    existing = write_store(tmp_path / "s.h5", [0], [], ["d"], [10], [0])
    assert main(base + [str(existing)]) == 2
    assert "exists: pass --resume" in capsys.readouterr().err
    assert main(base + [str(tmp_path / "c.txt")]) == 2
    assert "exists and is not a counts store" in capsys.readouterr().err
    assert main(base + [str(tmp_path / "c.txt"), "--resume"]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err and (tmp_path / "c.txt").read_text() == "text"


def test_info_says_who_writes_a_store(tmp_path, capsys):
    store = write_store(tmp_path / "s.h5", [0], [], ["d"], [10], [0], final=False)
    with StoreLock(store):
        assert main(["info", str(store)]) == 0
        assert f"being written by pid {os.getpid()} " in info_blocks(capsys.readouterr().out)[0]["state"]


def test_demo_refuses_a_folder_holding_a_demo_before_rewriting_it(tmp_path, capsys):
    """A second demo into the same folder used to rewrite its corpus and model, then fail at counts.h5."""
    write_store(tmp_path / "counts.h5", [0], [], ["d"], [10], [0])
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "counts.h5 exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.h5"]
