"""`fastneurons.config`: unit parsers and each command's dataclass, without any I/O.

parse_count reads decimal units and parse_bytes binary ones, both refusing anything that is not a
positive whole number; parse_shard reads i/N. RecordConfig.validate refuses each bad setting with a
ValueError naming its flag and normalizes --orders; its helpers (n-gram layers, shard, token budget)
and its stored metadata are checked too, as are the other commands' validate methods.
"""
import dataclasses
import json

import pytest

from fastneurons.config import (AnalyzeConfig, DemoConfig, InfoConfig, MergeConfig, RecordConfig, parse_bytes,
                                parse_count, parse_shard)


def record_config(**overrides):
    return RecordConfig(**{"model": "m", "corpus": ["c.txt"], "out": "o.h5", **overrides})


@pytest.mark.parametrize("text, expected", [
    ("5M", 5_000_000), ("100k", 100_000), ("100K", 100_000), ("2.5M", 2_500_000), (7, 7), (" 3 K ", 3000),
    ("1G", 10**9), ("2T", 2 * 10**12), ("42", 42), (2.0, 2), ("0.5k", 500),
])
def test_parse_count_reads_decimal_units(text, expected):
    value = parse_count(text)
    assert value == expected and type(value) is int


@pytest.mark.parametrize("text", ["", "  ", "abc", "0", "0k", "-1", "1.5", "5X", "1e6", "5MB", "k", "1/2",
                                  None, True, False, 0, -3, 2.5, "1.0000001M"])
def test_parse_count_refuses_what_is_not_a_positive_whole_count(text):
    with pytest.raises(ValueError):
        parse_count(text)


@pytest.mark.parametrize("text, expected", [("4.1M", 4_100_000), ("8.2G", 8_200_000_000), ("16.1K", 16_100),
                                            ("2.37M", 2_370_000)])
def test_parse_count_decimal_fractions_that_are_whole(text, expected):
    assert parse_count(text) == expected


def test_parse_count_refuses_infinity_and_nan_with_a_value_error():
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            parse_count(value)


@pytest.mark.parametrize("text, expected", [
    ("4G", 4 * 2**30), ("4GiB", 4 * 2**30), ("4gib", 4 * 2**30), ("512MB", 512 * 2**20), ("512M", 512 * 2**20),
    ("1.5K", 1536), ("1KiB", 1024), (" 2 G ", 2 * 2**30), ("1T", 2**40), ("100", 100), ("100B", 100), (4096, 4096),
])
def test_parse_bytes_reads_binary_units(text, expected):
    value = parse_bytes(text)
    assert value == expected and type(value) is int


@pytest.mark.parametrize("text", ["", "B", "GiB", "abc", "0", "0G", "-1G", "0.5", "1.1K", "4X", "4GG", True])
def test_parse_bytes_refuses_what_is_not_a_positive_whole_size(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


@pytest.mark.parametrize("text, expected", [("1/4", (1, 4)), ("0/1", (0, 1)), (" 3 / 4 ", (3, 4)), ("0/4", (0, 4))])
def test_parse_shard_reads_index_and_total(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "5/4", "1/0", "0/0", "a/b", "-1/4", "1", "1/4/2", "", "1.0/4"])
def test_parse_shard_refuses_bad_shards(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_record_defaults_validate():
    config = record_config()
    assert config.validate() is config
    assert config.orders == [1, 2, 3] and config.positions and config.progress and not config.resume
    assert config.batch_size == 8 and config.unit_batches == 4 and config.ngram_memory == "2G"
    assert config.device == "auto" and config.dtype == "auto" and config.tokens is None


@pytest.mark.parametrize("overrides, flag", [
    ({"corpus": []}, "corpus"),
    ({"tokens": "lots"}, "lots"),
    ({"tokens": "0"}, "'0'"),
    ({"ngram_memory": "2Q"}, "2Q"),
    ({"gpu_memory": "-4G"}, "-4G"),
    ({"seq_len": 1}, "--seq-len"),
    ({"seq_len": 0}, "--seq-len"),
    ({"batch_size": 0}, "--batch-size"),
    ({"unit_batches": 0}, "--unit-batches"),
    ({"commit_seconds": -1}, "--commit-seconds"),
    ({"orders": [4]}, "--orders"),
    ({"orders": [0, 1]}, "--orders"),
    ({"orders": []}, "--orders"),
    ({"layers": []}, "--layers"),
    ({"layers": [0, -1]}, "--layers"),
    ({"shard": "4/4"}, "--shard"),
    ({"shard": "x"}, "--shard"),
    ({"dtype": "int8"}, "--dtype"),
    ({"device": "tpu"}, "--device"),
    ({"device": "cuda:x"}, "--device"),
    ({"device": "cudax"}, "--device"),
    ({"threads": 0}, "--threads"),
])
def test_record_validate_refuses_each_bad_setting_naming_it(overrides, flag):
    with pytest.raises(ValueError) as err:
        record_config(**overrides).validate()
    assert flag in str(err.value)


@pytest.mark.parametrize("overrides", [
    {"seq_len": 2}, {"commit_seconds": 0}, {"threads": 1}, {"device": "cpu"}, {"device": "cuda"},
    {"device": "cuda:1"}, {"dtype": "bfloat16"}, {"dtype": "float16"}, {"dtype": "float32"}, {"layers": [0]},
    {"shard": "3/4"}, {"tokens": "5M"}, {"gpu_memory": "4GiB"}, {"ngram_memory": "512MB"}, {"orders": [2]},
])
def test_record_validate_accepts_edge_values(overrides):
    record_config(**overrides).validate()


def test_record_orders_are_sorted_and_unique_after_validate():
    assert record_config(orders=[3, 1, 3, 1]).validate().orders == [1, 3]


def test_ngram_layer_list_default_none_and_explicit():
    config = record_config()
    assert config.ngram_layer_list(12) == list(range(6))
    assert config.ngram_layer_list(7) == [0, 1, 2, 3]  # (7 + 1) // 2: the middle layer of an odd model too
    assert config.ngram_layer_list(1) == [0]
    for none in (["none"], ["None"], ["NONE"]):
        assert record_config(ngram_layers=none).ngram_layer_list(12) == []
    assert record_config(ngram_layers=["5", "1", "5"]).ngram_layer_list(12) == [1, 5]
    assert record_config(ngram_layers=[2, 0]).ngram_layer_list(12) == [0, 2]


def test_shard_index_and_max_tokens():
    assert record_config().shard_index == (0, 1)
    assert record_config(shard="2/8").shard_index == (2, 8)
    assert record_config().max_tokens is None
    assert record_config(tokens="2.5M").max_tokens == 2_500_000
    assert record_config(tokens="100k").max_tokens == 100_000


def test_record_metadata_is_json_and_round_trips_every_field():
    config = record_config(corpus=["code=a.txt", "b.jsonl"], tokens="5M", seq_len=128, full_length=True,
                           layers=[0, 2], ngram_layers=["none"], orders=[2, 1], threshold=0.25,
                           gpu_memory="4G", shard="1/2", bos_id=2, threads=3, positions=False).validate()
    meta = config.to_metadata()
    assert set(meta) == {f.name for f in dataclasses.fields(RecordConfig)}
    back = json.loads(json.dumps(meta))
    assert back == meta
    assert RecordConfig(**back) == config
    assert all(name in meta for name in RecordConfig.COUNT_SETTINGS)
    assert meta["orders"] == [1, 2] and meta["positions"] is False


def test_merge_needs_two_inputs_and_a_valid_memory():
    with pytest.raises(ValueError, match="at least two"):
        MergeConfig(inputs=["a.h5"], out="m.h5").validate()
    with pytest.raises(ValueError, match="at least two"):
        MergeConfig(inputs=[], out="m.h5").validate()
    with pytest.raises(ValueError):
        MergeConfig(inputs=["a.h5", "b.h5"], out="m.h5", ngram_memory="lots").validate()
    config = MergeConfig(inputs=["a.h5", "b.h5"], out="m.h5")
    assert config.validate() is config and config.ngram_memory == "2G"


def test_analyze_refuses_unknown_formats_and_no_counts():
    assert AnalyzeConfig(counts=["c.h5"], formats=["pdf", "png", "svg"]).validate().formats == ["pdf", "png", "svg"]
    config = AnalyzeConfig(counts=["c.h5"])
    assert config.validate() is config and config.formats == ["png", "svg"] and config.settings is None
    with pytest.raises(ValueError, match="--formats.*gif"):
        AnalyzeConfig(counts=["c.h5"], formats=["png", "gif"]).validate()
    with pytest.raises(ValueError, match="counts file"):
        AnalyzeConfig(counts=[]).validate()


def test_analyze_validates_its_settings():
    from fastneurons.analysis.pipeline import AnalysisSettings

    AnalyzeConfig(counts=["c.h5"], settings=AnalysisSettings()).validate()
    with pytest.raises(ValueError, match="coverage"):
        AnalyzeConfig(counts=["c.h5"], settings=AnalysisSettings(coverage=1.5)).validate()


def test_info_default_has_no_stores():
    assert InfoConfig().stores == []
    assert InfoConfig().validate().stores == []
    assert InfoConfig().stores is not InfoConfig().stores  # a fresh list each time


def test_demo_validate():
    config = DemoConfig()
    assert config.validate() is config
    for bad in ({"tokens": "0"}, {"corpus_bytes": "lots"}):
        with pytest.raises(ValueError):
            DemoConfig(**bad).validate()
    with pytest.raises(ValueError, match="--seq-len"):
        DemoConfig(seq_len=63).validate()
    DemoConfig(seq_len=64).validate()


@pytest.mark.parametrize("ngram_layers", [["foo"], ["none", "3"], [], ["-1"]])
def test_record_validate_refuses_bad_ngram_layers(ngram_layers):
    with pytest.raises(ValueError, match="--ngram-layers"):
        record_config(ngram_layers=ngram_layers).validate()


@pytest.mark.parametrize("name", ["threshold", "commit_seconds"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_record_refuses_non_finite_floats(name, value):
    """NaN passes every range check (all comparisons are false): --threshold nan used to make a 0-unit
    store before the kernel refused it, --commit-seconds nan disabled intermediate commits."""
    with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} .*finite"):
        record_config(**{name: value}).validate()


@pytest.mark.parametrize("name", ["smooth", "mi_threshold", "coverage", "cover_rate", "log_base", "eps_weak",
                                  "null_quantile"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_analysis_settings_refuse_non_finite_floats(name, value):
    from fastneurons.analysis.pipeline import AnalysisSettings

    with pytest.raises(ValueError, match="finite"):
        AnalyzeConfig(counts=["c.h5"], settings=AnalysisSettings(**{name: value})).validate()


def test_merge_overwrite_defaults_to_off():
    assert MergeConfig(inputs=["a.h5", "b.h5"], out="m.h5").overwrite is False


def test_rerecord_lost_runs_implies_resume():
    assert record_config(rerecord_lost_runs=True).validate().resume is True
    assert record_config().validate().resume is False
