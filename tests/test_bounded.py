"""The bounded n-gram mode (docs/bounded-ngrams.md) against the exact tables.

Kernels: the Misra-Gries guarantee and pass 2's exact counts on random bits. End to end: random-weight
and planted OPTs recorded in both modes give identical detectors, G(n), detected n-gram sets, Fig. 4
counts, suppression and C_k(n) for every certified neuron; a summary made too small leaves neurons
uncertified and says so; resume after an interruption, shards + merge + second pass stay exact.
"""
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastneurons.analysis import AnalysisSettings, analyze_counts
from fastneurons.cli import main
from fastneurons.info import describe_store
from fastneurons.analysis.coverage import UNKNOWN, coverage_bounds, coverage_sizes_naive
from fastneurons.analysis.neuron import neuron_profile
from fastneurons.reporting.neuron_text import format_profile
from fastneurons.config import SecondPassConfig
from fastneurons.ngrams.accumulator import NgramAccumulator, SeenAccumulator
from fastneurons.ngrams import bounded as bounded_module
from fastneurons.ngrams.bounded import CandidateCounter, SummaryAccumulator, plan_candidates
from fastneurons.ngrams.by_neuron import slots_of_bits
from fastneurons.recording import runner
from fastneurons.recording import second_pass as second_pass_module
from fastneurons.recording.second_pass import second_pass
from fastneurons.store import StoreError, merge_stores, open_counts
from fastneurons.store.summaries import has_counted

from interrupts import interrupt_after_commits
from test_runner import _config, _opt, corpus  # noqa: F401  (corpus is a fixture)

QUIET = dict(log=lambda *a: None)


def _random_chunk(seed, rows=3000, neurons=100, density=0.1, vocab=40, seq=150):
    rng = np.random.default_rng(seed)
    ids = rng.zipf(1.3, rows) % vocab
    positions = np.tile(np.arange(seq), rows // seq).astype(np.int32)
    active = rng.random((rows, neurons)) < density * (1 + (np.arange(neurons) % 3 == 0))
    padded = np.concatenate([active, np.zeros((rows, (-neurons) % 64), bool)], axis=1)
    bits = np.packbits(padded, axis=1, bitorder="little").view(np.uint64)
    return bits, ids, positions, positions >= 1


def _as_dict(table):
    return dict(zip(zip(table.key.tolist(), table.neuron.tolist()), table.count.tolist()))


@pytest.mark.parametrize("capacity", [3, 10, 50])
def test_summaries_undercount_by_at_most_delta_and_merge_with_the_same_guarantee(capacity):
    bits, ids, pos, counted = _random_chunk(0)
    exact = NgramAccumulator(100)
    exact.add(bits, ids, pos, counted)
    truth = exact.tables()
    halves = []
    for part in (slice(0, 1500), slice(1500, 3000)):
        acc = SummaryAccumulator(100, capacity=capacity)
        for start in range(part.start, part.stop, 300):
            acc.add(bits[start:start + 300], ids[start:start + 300], pos[start:start + 300], counted[start:start + 300])
            acc.fold()
        halves.append(acc.summaries)
    for k in (1, 2, 3):
        merged = halves[0][k].merge(halves[1][k])
        true = _as_dict(truth[k])
        for summary in (merged,):
            held = _as_dict(summary.table)
            assert np.bincount(summary.table.neuron, minlength=100).max() <= capacity
            np.testing.assert_array_equal(summary.mass, np.bincount(truth[k].neuron, truth[k].count, 100))
            for (key, n), c in true.items():
                assert c - summary.delta[n] <= held.get((key, n), 0) <= c
            assert not set(held) - set(true)
            # Misra-Gries: delta <= (N - N_held) / (capacity + 1)
            kept = np.bincount(summary.table.neuron, summary.table.count, 100)
            assert (summary.delta * (capacity + 1) <= summary.mass - kept).all()


def _naive_fold(held: dict, new: dict, num_neurons: int, capacity: int, delta: np.ndarray) -> dict:
    """Misra-Gries merge, neuron by neuron with dicts: add the counts, and past ``capacity`` n-grams
    subtract the (capacity+1)-th largest count and drop what reaches 0."""
    out = {}
    for n in range(num_neurons):
        merged = {key: c for (key, m), c in held.items() if m == n}
        for (key, m), c in new.items():
            if m == n:
                merged[key] = merged.get(key, 0) + c
        if len(merged) > capacity:
            cut = sorted(merged.values(), reverse=True)[capacity]
            delta[n] += cut
            merged = {key: c - cut for key, c in merged.items() if c > cut}
        out.update({(key, n): c for key, c in merged.items()})
    return out


@pytest.mark.parametrize("capacity", [1, 4, 30])
@pytest.mark.parametrize("threads", [1, 2])
def test_fold_by_neuron_equals_a_naive_misra_gries_merge(capacity, threads, monkeypatch):
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    tables = []
    for seed in (4, 5):
        bits, ids, pos, counted = _random_chunk(seed, rows=600, density=0.2)
        exact = NgramAccumulator(100)
        exact.add(bits, ids, pos, counted)
        tables.append(exact.tables())
    for k in (1, 2, 3):
        delta = np.zeros(100, dtype=np.int64)
        first = bounded_module.fold_rows(bounded_module.ByNeuron.of(bounded_module.Table.empty(k), 100),
                                         bounded_module.ByNeuron.of(tables[0][k], 100), capacity, delta)
        naive_delta = np.zeros(100, dtype=np.int64)
        naive_first = _naive_fold({}, _as_dict(tables[0][k]), 100, capacity, naive_delta)
        assert _as_dict(first.table(k)) == naive_first
        both = bounded_module.fold_rows(first, bounded_module.ByNeuron.of(tables[1][k], 100), capacity, delta)
        naive_both = _naive_fold(naive_first, _as_dict(tables[1][k]), 100, capacity, naive_delta)
        table = both.table(k)
        assert _as_dict(table) == naive_both
        np.testing.assert_array_equal(delta, naive_delta)
        if capacity < 30:
            assert (naive_delta > 0).any()  # the prune ran
        order = np.lexsort((table.neuron, table.key))
        np.testing.assert_array_equal(order, np.arange(table.rows))  # sorted by (key, neuron)
    numba.set_num_threads(before)


@pytest.mark.parametrize("capacity", [1, 7, 40])
def test_fold_ranks_large_counts_like_a_naive_merge(capacity):
    """Counts far above the fold's histogram bins (SELECT_BINS) and ties at the cut."""
    rng = np.random.default_rng(capacity)
    sides = []
    for _ in range(2):
        key = rng.integers(0, 60, 900).astype(np.uint64)
        neuron = rng.integers(0, 12, 900).astype(np.uint32)
        count = rng.choice([1, 2, 255, 256, 257, 3000, 10**6], 900).astype(np.int64)
        sides.append(bounded_module._pairs_table(key, neuron, 1))
        sides[-1].count[:] = count[:sides[-1].rows]
    delta, naive_delta = np.zeros(12, dtype=np.int64), np.zeros(12, dtype=np.int64)
    folded = bounded_module.fold_rows(*(bounded_module.ByNeuron.of(t, 12) for t in sides), capacity, delta)
    expected = _naive_fold(_as_dict(sides[0]), _as_dict(sides[1]), 12, capacity, naive_delta)
    assert _as_dict(folded.table(1)) == expected
    np.testing.assert_array_equal(delta, naive_delta)
    assert (naive_delta >= 256).any()


def test_rows_by_neuron_equal_the_chunk_table_regrouped():
    from fastneurons.ngrams.accumulator import chunk_table
    rng = np.random.default_rng(3)
    for neurons in (1, 64, 65, 700):
        for density in (0.0, 0.05, 0.7):
            active = rng.random((400, -(-neurons // 64) * 64)) < density
            active[:, neurons:] = False
            bits = np.packbits(active, axis=1, bitorder="little").view(np.uint64)
            rows = rng.integers(0, 400, 900)
            keys = rng.integers(0, 25, 900).astype(np.uint64)
            direct = slots_of_bits(bits, rows, keys, neurons).packed()
            regrouped = bounded_module.ByNeuron.of(chunk_table(bits, rows, keys, 1), neurons)
            for field in ("offsets", "key", "count"):
                np.testing.assert_array_equal(getattr(direct, field), getattr(regrouped, field))


def test_a_snapshot_written_before_raw_chunks_resumes_to_the_same_summaries(tmp_path, monkeypatch):
    """Snapshots written before 2026-12-06 saved pending events as exact tables per order: a run resumed
    from one (and from the snapshots it writes before its next fold) folds them with the rest."""
    from fastneurons.store import summaries as stored

    monkeypatch.setattr(bounded_module, "FOLD_EVENTS", 1 << 30)  # no fold before finish
    bits, ids, pos, counted = _random_chunk(12, rows=1200)
    first, second = slice(0, 600), slice(600, 1200)
    straight = SummaryAccumulator(100, capacity=4)
    for part in (first, second):
        straight.add(bits[part], ids[part], pos[part], counted[part])
    straight.finish()
    old = SummaryAccumulator(100, capacity=4)
    old.add(bits[first], ids[first], pos[first], counted[first])
    summaries, pending, unfolded, folds = old.state()
    resumed = SummaryAccumulator(100, capacity=4)
    resumed.restore(summaries, bounded_module.Pending([], {k: pending.exact_tables(k) for k in (1, 2, 3)}),
                    unfolded)  # the old form: exact tables per order
    resumed.add(bits[second], ids[second], pos[second], counted[second])
    with h5py.File(tmp_path / "s.h5", "w") as f:  # a snapshot of it keeps the old tables beside a new chunk
        stored.write_resume_state(f, {0: resumed.state()})
    with h5py.File(tmp_path / "s.h5", "r") as f:
        state = [stored._summary_parts(f, 0, k) for k in (1, 2, 3)]
    again = SummaryAccumulator(100, capacity=4)
    again.restore({k: state[k - 1][0] for k in (1, 2, 3)},
                  bounded_module.Pending(state[0][1].chunks, {k: state[k - 1][1].tables[k] for k in (1, 2, 3)}),
                  state[0][2], state[0][3])
    for accumulator in (resumed, again):
        accumulator.finish()
        for k in (1, 2, 3):
            assert _as_dict(accumulator.summaries[k].table) == _as_dict(straight.summaries[k].table)
            np.testing.assert_array_equal(accumulator.summaries[k].delta, straight.summaries[k].delta)
        assert (straight.summaries[3].delta > 0).any()


def test_a_summary_too_large_to_reserve_says_so():
    with pytest.raises(MemoryError, match="smaller --summary-capacity"):
        SummaryAccumulator(10**6, capacity=10**9)


def test_top_sums_equal_sorted_sums():
    from fastneurons.ngrams import summary as kernels
    rng = np.random.default_rng(11)
    sizes = rng.integers(0, 120, 300)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    ends = starts + rng.integers(0, sizes + 1)  # slots with room to spare, as held rows are
    count = rng.choice([1, 1, 2, 3, 300, 5000], sizes.sum()).astype(np.int64)
    among = rng.random(300) < 0.8
    for m in (0, 1, 7, 50, 200):
        want = [int(np.sort(count[starts[n]:ends[n]])[::-1][:m].sum()) if among[n] else 0 for n in range(300)]
        assert kernels.top_sums(starts, ends, count, m, among).tolist() == want


def test_second_pass_counts_exactly_the_planned_and_rare_pairs():
    bits, ids, pos, counted = _random_chunk(1, density=0.03)
    exact = NgramAccumulator(100)
    exact.add(bits, ids, pos, counted)
    truth = exact.tables()
    seen_acc = SeenAccumulator()
    seen_acc.add(ids, pos, counted)
    seen = seen_acc.tables()
    acc = SummaryAccumulator(100, capacity=6)
    acc.add(bits, ids, pos, counted)
    acc.finish()
    for k in (1, 2, 3):
        plan = plan_candidates(acc.summaries[k], max_coverage=400)  # loose: many neurons get rare pairs
        assert (plan.rare_limit > 0).any()
        counter = CandidateCounter({k: plan}, seen)
        for start in range(0, 3000, 750):
            counter.add(bits[start:start + 750], ids[start:start + 750], pos[start:start + 750], counted[start:start + 750])
        got = _as_dict(counter.tables()[k])
        true = _as_dict(truth[k])
        seen_of = dict(zip(seen[k].key.tolist(), seen[k].count.tolist()))
        planned = set(zip(plan.key.tolist(), plan.neuron.tolist()))
        want = {pair: c for pair, c in true.items()
                if pair in planned or seen_of[pair[0]] <= plan.rare_limit[pair[1]]}
        assert got == want


def test_coverage_bounds_bracket_the_exact_coverage():
    bits, ids, pos, counted = _random_chunk(2, density=0.05)
    exact = NgramAccumulator(100)
    exact.add(bits, ids, pos, counted)
    for k, table in exact.tables().items():
        true = coverage_sizes_naive(table.neuron, table.count, 100)
        mass = np.bincount(table.neuron, table.count, 100)
        rng = np.random.default_rng(k)
        # leave out n-grams of small count: a table of exact counts missing pairs with count <= bound
        bound = rng.integers(0, 4, 100)
        kept = table.count > bound[table.neuron]
        lower, upper, _ = coverage_bounds(table.neuron[kept], table.count[kept], 100, mass=mass, bound=bound)
        alive = mass > 0
        assert (lower[alive] <= true[alive]).all()
        assert ((upper[alive] >= true[alive]) | (upper[alive] == UNKNOWN)).all()
        exact_rows = alive & (lower == upper)
        np.testing.assert_array_equal(lower[exact_rows], true[exact_rows])
        assert exact_rows[bound == 0].sum() == alive[bound == 0].sum()


@pytest.mark.parametrize("capacity", [3, 12, 40])
def test_coverage_bounds_from_a_summary_alone_bracket_the_exact_coverage(capacity):
    """Lemma 4: a summary's counts (each at most delta below the truth) bound C_k(n) on their own."""
    bits, ids, pos, counted = _random_chunk(3, density=0.05)
    exact = NgramAccumulator(100)
    exact.add(bits, ids, pos, counted)
    summarised = SummaryAccumulator(100, capacity=capacity)
    for start in range(0, 3000, 300):
        summarised.add(bits[start:start + 300], ids[start:start + 300], pos[start:start + 300],
                       counted[start:start + 300])
        summarised.fold()
    some_cut = False
    for k, table in exact.tables().items():
        summary = summarised.summaries[k]
        for coverage in (0.5, 0.95):
            true = coverage_sizes_naive(table.neuron, table.count, 100, coverage)
            cut = summary.delta > 0
            some_cut |= bool(cut.any())
            lower, upper, _ = coverage_bounds(summary.table.neuron, summary.table.count, 100, coverage,
                                              mass=summary.mass, bound=summary.delta, approximate=cut)
            alive = summary.mass > 0
            assert (lower[alive] <= true[alive]).all() and (lower[alive] >= 1).all()
            assert ((upper[alive] >= true[alive]) | (upper[alive] == UNKNOWN)).all()
            np.testing.assert_array_equal(lower[~cut], true[~cut])  # never cut: exact
            np.testing.assert_array_equal(upper[~cut & alive], true[~cut & alive])
    assert some_cut


def _results(path, **settings):
    with open_counts(path) as counts:
        return analyze_counts(counts, AnalysisSettings(**settings))


def assert_same_ngram_results(exact, bounded, expect_all_certified=True):
    """Identical detectors, G(n), detected sets and Fig. 4 counts; identical C_k(n) where certified."""
    for k in exact.orders:
        for layer in exact.ngram_layers:
            e, b = exact.coverage[k][layer], bounded.coverage[k][layer]
            certified = (b.sizes == b.upper) & (b.mass > 0)
            np.testing.assert_array_equal(b.mass, e.mass)
            np.testing.assert_array_equal(b.sizes[certified], e.sizes[certified])
            assert ((b.sizes <= e.sizes) & ((b.upper >= e.sizes) | (b.upper == UNKNOWN))).all()
            assert b.certified == int(certified.sum())
            # certain bins are right: the exact histogram minus the uncertain neurons' true bins
            assert (b.histogram.counts <= e.histogram.counts).all()
            assert b.histogram.counts.sum() + b.histogram.uncertain.sum() == e.histogram.neurons
            de, db = exact.detectors[k][layer], bounded.detectors[k][layer]
            if expect_all_certified:
                assert b.bin_certified == e.neurons_with_mass and db.num_uncertain == 0
                np.testing.assert_array_equal(b.histogram.counts, e.histogram.counts)
            if db.num_uncertain == 0:
                np.testing.assert_array_equal(db.neurons, de.neurons)
                for name in ("ngram_offsets", "ngram_keys", "ngram_active", "ngram_seen", "coverage_size",
                             "covered_mass", "mass"):
                    np.testing.assert_array_equal(getattr(db, name), getattr(de, name), err_msg=name)
            else:  # every detector it lists is a true detector with the same G(n)
                for i, n in enumerate(db.neurons.tolist()):
                    j = de.neurons.tolist().index(n)
                    np.testing.assert_array_equal(db.ngram_keys[db.ngram_offsets[i]:db.ngram_offsets[i + 1]],
                                                  de.ngram_keys[de.ngram_offsets[j]:de.ngram_offsets[j + 1]])
        if all(bounded.detectors[k][layer].num_uncertain == 0 for layer in exact.ngram_layers):
            d_e, d_b = exact.detected_ngrams[k], bounded.detected_ngrams[k]
            for name in ("num_detectors", "set_size", "cumulative_size", "new_overall", "new_vs_previous"):
                assert getattr(d_b, name) == getattr(d_e, name), name


@pytest.mark.parametrize("capacity", [2048, 64])
def test_random_opt_bounded_equals_exact(tmp_path, corpus, capacity):  # noqa: F811
    model = _opt(tmp_path, "opt")
    exact = _config(model, corpus, tmp_path / "exact.h5", ngrams="exact")
    bounded = _config(model, corpus, tmp_path / "bounded.h5", ngrams="bounded", summary_capacity=capacity)
    runner.record(exact, **QUIET)
    runner.record(bounded, **QUIET)
    with open_counts(bounded.out) as counts, open_counts(exact.out) as reference:
        assert counts.ngram_mode == "bounded" and counts.second_pass_done
        pruned = any(counts.ngram_table(layer, k).bound.any() for layer in (0, 1) for k in (1, 2, 3))
        # pass 2 counts only cut neurons that may be detector candidates; with none, pass 1 wrote empty counts
        assert counts._file["counted"].attrs["empty_plan"] or pruned
        if pruned:
            with pytest.raises(StoreError, match="cut some neurons"):
                counts.ngram_active(0, 1)
            group = counts._file["counted/layer0/k3"]
            cut = counts._file["summaries/layer0/k3/delta"][()] > 0
            was_counted = group["counted_neurons"][()]
            assert cut.any() and not cut.all() and not (was_counted & ~cut).any()
            assert was_counted[group["table/neuron"][()]].all()
            held = counts.ngram_table(0, 3)
            np.testing.assert_array_equal(held.approximate, cut & ~was_counted)
        else:  # summaries that cut nothing are the exact tables, and no second pass ran
            assert counts.second_pass_state == "not needed"
            assert "second pass not needed" in describe_store(bounded.out)["ngram_mode"]
            for layer in (0, 1):
                for k in (1, 2, 3):
                    for mine, theirs in zip(counts.ngram_active(layer, k), reference.ngram_active(layer, k)):
                        np.testing.assert_array_equal(mine, theirs)
    assert pruned == (capacity == 64)  # the small summaries were cut, the large ones never
    e, b = _results(exact.out), _results(bounded.out)
    assert_same_ngram_results(e, b, expect_all_certified=capacity == 2048)
    assert sum(b.detectors[k][layer].num_uncertain for k in b.orders for layer in b.ngram_layers) == 0
    assert b.tokens == e.tokens


def test_a_summary_too_small_leaves_neurons_uncertified_and_says_so(tmp_path, corpus):  # noqa: F811
    model = _opt(tmp_path, "opt")
    exact = _config(model, corpus, tmp_path / "exact.h5", ngrams="exact")
    small = _config(model, corpus, tmp_path / "small.h5", ngrams="bounded", summary_capacity=3)
    runner.record(exact, **QUIET)
    runner.record(small, **QUIET)
    e, b = _results(exact.out), _results(small.out)
    uncertified = sum(b.coverage[k][layer].neurons_with_mass - b.coverage[k][layer].certified
                      for k in b.orders for layer in b.ngram_layers)
    uncertain_bins = sum(int(b.coverage[k][layer].histogram.uncertain.sum()) for k in b.orders for layer in b.ngram_layers)
    assert uncertified > 0 and uncertain_bins > 0
    assert_same_ngram_results(e, b, expect_all_certified=False)
    summary = b.summary["ngram_certified"]
    assert summary[3][0]["certified"] < summary[3][0]["neurons_with_mass"]
    assert "uncertain_candidates" in summary[3][0]
    report = tmp_path / "report"
    assert main(["analyze", small.out, "--out", str(report), "--no-suppression", "--formats", "svg"]) == 0
    results = json.loads((report / "results.json").read_text())
    assert results["summary"]["ngram_certified"]["3"][0]["certified"] == summary[3][0]["certified"]
    html = (report / "report.html").read_text()
    assert "C_k(n) certified" in html and "--unigram-capacity" in html  # and how to certify more
    # one neuron looked up (`fastneurons show`) says what the whole-layer analysis says, bounds included
    with open_counts(small.out) as counts:
        shown = 0
        for neuron in range(counts.num_neurons):
            profile = neuron_profile(counts, 0, neuron, AnalysisSettings(null_samples=0))
            for p in profile.ngrams:
                cov, det = b.coverage[p.k][0], b.detectors[p.k][0]
                upper = int(cov.upper[neuron])
                assert (p.coverage_size, p.coverage_upper) == (int(cov.sizes[neuron]),
                                                               None if upper == UNKNOWN else upper)
                assert p.detector == (neuron in det.neurons.tolist())
                assert p.count_bound == int(counts.ngram_table(0, p.k).bound[neuron])
                if p.coverage_upper != p.coverage_size and shown < 2:
                    assert ("in [" in format_profile(profile)) or (">=" in format_profile(profile))
                    shown += 1
        assert shown == 2


def test_a_larger_unigram_capacity_keeps_the_token_summaries_exact(tmp_path, corpus):  # noqa: F811
    model = _opt(tmp_path, "opt")
    exact = _config(model, corpus, tmp_path / "exact.h5", ngrams="exact")
    mixed = _config(model, corpus, tmp_path / "mixed.h5", ngrams="bounded", summary_capacity=3, unigram_capacity=4096)
    runner.record(exact, **QUIET)
    runner.record(mixed, **QUIET)
    with open_counts(mixed.out) as counts, open_counts(exact.out) as reference:
        assert (counts.metadata["summary_capacity"], counts.metadata["unigram_capacity"]) == (3, 4096)
        for layer in (0, 1):
            assert counts.ngram_table(layer, 3).bound.any()  # bigrams and trigrams cut at 3 ...
            assert not counts.ngram_table(layer, 1).bound.any()  # ... tokens never: their table is the exact one
            for mine, theirs in zip(counts.ngram_active(layer, 1), reference.ngram_active(layer, 1)):
                np.testing.assert_array_equal(mine, theirs)
        assert counts._file["summaries/layer0/k1"].attrs["capacity"] == 4096
        assert counts._file["summaries/layer0/k2"].attrs["capacity"] == 3
    assert "summary capacity 3, k = 1: 4096" in describe_store(mixed.out)["ngram_mode"]
    e, b = _results(exact.out), _results(mixed.out)
    for layer in b.ngram_layers:
        coverage = b.coverage[1][layer]
        assert coverage.certified == coverage.neurons_with_mass > 0
        np.testing.assert_array_equal(coverage.histogram.counts, e.coverage[1][layer].histogram.counts)
    assert_same_ngram_results(e, b, expect_all_certified=False)
    # the k = 1 summaries' capacity is a count setting: a resume or merge at another one is refused
    other = dataclasses.replace(mixed, out=str(tmp_path / "other.h5"), unigram_capacity=8)
    runner.record(other, **QUIET)
    with pytest.raises(StoreError, match="unigram_capacity"):
        merge_stores([mixed.out, other.out], tmp_path / "merged.h5", ngram_memory=1 << 20)
    with pytest.raises(StoreError, match="unigram_capacity"):
        runner.record(dataclasses.replace(other, resume=True, unigram_capacity=4096), **QUIET)


def test_resume_after_an_interruption_gives_the_same_summaries(tmp_path, corpus, monkeypatch):  # noqa: F811
    model = _opt(tmp_path, "opt")
    monkeypatch.setattr(bounded_module, "FOLD_EVENTS", 60_000)  # folds between commits: snapshots hold pending events
    full = _config(model, corpus, tmp_path / "full.h5", ngrams="bounded", summary_capacity=5)
    runner.record(full, **QUIET)
    part = _config(model, corpus, tmp_path / "part.h5", ngrams="bounded", summary_capacity=5)
    interrupt_after_commits(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        runner.record(part, **QUIET)
    monkeypatch.undo()  # commits work again
    monkeypatch.setattr(bounded_module, "FOLD_EVENTS", 60_000)
    state = second_pass_module.stored_summaries(part.out)
    assert any(chunk.num_rows for _, pending, *_ in state.values() for chunk in pending.chunks)  # unfolded
    assert any(summaries[k].mass.any() for summaries, *_ in state.values() for k in summaries)  # and folds
    with h5py.File(full.out, "r") as f:  # a finished store holds folded summaries only
        assert not any("pending" in f["summaries"][name] for name in ("layer0/k1", "layer0/k2", "layer0/k3"))
    with pytest.raises(StoreError, match="unfinished"):
        second_pass(SecondPassConfig(store=part.out, progress=False), **QUIET)
    # pass 1 resumes; then pass 2 is killed after saving its progress twice, and a rerun continues it
    saves = {"n": 0}
    original_save = second_pass_module._save_progress

    def failing_save(*args, **kwargs):
        original_save(*args, **kwargs)
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(second_pass_module, "_save_progress", failing_save)
    with pytest.raises(KeyboardInterrupt):
        runner.record(dataclasses.replace(part, resume=True), **QUIET)
    monkeypatch.setattr(second_pass_module, "_save_progress", original_save)
    with open_counts(part.out) as counts:
        assert counts.complete and not counts.second_pass_done
    assert second_pass_module.progress_path(Path(part.out)).exists()
    said = []
    second_pass(SecondPassConfig(store=part.out, progress=False, commit_seconds=0), log=said.append)
    assert not second_pass_module.progress_path(Path(part.out)).exists()
    assert any("continuing the second pass" in line for line in said), said
    with h5py.File(full.out, "r") as a, h5py.File(part.out, "r") as b:
        for name in ("summaries", "counted"):
            def same(path, obj, name=name):
                if isinstance(obj, h5py.Dataset):
                    np.testing.assert_array_equal(obj[()], b[name][path][()], err_msg=path)
            a[name].visititems(same)
    assert_same_ngram_results(_results(full.out), _results(part.out), expect_all_certified=False)


def test_a_snapshot_deflates_only_what_changed(tmp_path, monkeypatch):
    """Snapshots between folds copy the summaries and the pending parts the last one wrote (chunk by
    chunk) and write one new part; after a fold the summaries are written anew and no part is left.
    Every snapshot reads back as the state it saved."""
    from fastneurons.store import summaries as stored

    written = []
    write_rows, write_chunk = stored._write_by_neuron, stored._write_chunk
    monkeypatch.setattr(stored, "_write_by_neuron", lambda *a: written.append("summary") or write_rows(*a))
    monkeypatch.setattr(stored, "_write_chunk", lambda group, *a: written.append(group.name) or write_chunk(group, *a))
    acc = SummaryAccumulator(100, capacity=5)
    bits, ids, pos, counted = _random_chunk(9, rows=1800)

    def snapshot(name, previous):
        written.clear()
        state = acc.state()
        with h5py.File(tmp_path / name, "w") as f:
            stored.write_resume_state(f, {0: state}, tmp_path / previous if previous else None)
        with h5py.File(tmp_path / name, "r") as f:
            for k in (1, 2, 3):
                summary, pending, unfolded, folds = stored._summary_parts(f, 0, k)
                assert (unfolded, folds) == (state[2], state[3])
                assert _as_dict(summary.table) == _as_dict(state[0][k].table)
                assert [_as_dict(p) for p in pending.exact_tables(k)] == [_as_dict(p) for p in
                                                                          state[1].exact_tables(k)]
        return list(written)

    for step, (start, name, previous) in enumerate([(0, "a.h5", None), (300, "b.h5", "a.h5"), (600, "c.h5", "b.h5")]):
        acc.add(bits[start:start + 300], ids[start:start + 300], pos[start:start + 300], counted[start:start + 300])
        wrote = snapshot(name, previous)
        assert wrote.count("summary") == (3 if step == 0 else 0)  # unchanged summaries are copied
        assert [w for w in wrote if w != "summary"] == [f"/summaries/layer0/pending/{step}"]  # one new part
    acc.fold()
    wrote = snapshot("d.h5", "c.h5")
    assert wrote == ["summary"] * 3  # after a fold: the summaries anew, nothing pending
    acc.add(bits[900:1200], ids[900:1200], pos[900:1200], counted[900:1200])
    assert snapshot("e.h5", "d.h5") == ["/summaries/layer0/pending/0"]


@pytest.mark.parametrize("repeat", [1, 300])
def test_a_snapshot_writes_the_held_rows_in_place_in_the_narrowest_types(tmp_path, repeat):
    """``state()`` hands the snapshot the held rows where they are (no copy of the summaries); they are
    stored packed, in the smallest unsigned types that hold them, and read back as the summaries."""
    from fastneurons.store import summaries as stored

    acc = SummaryAccumulator(100, capacity=6)
    bits, ids, pos, counted = _random_chunk(4, rows=600)
    for _ in range(repeat):  # counts above 255 when the same chunk comes 300 times
        acc.add(bits, ids, pos, counted)
    acc.fold()
    summaries = acc.state()[0]
    for k, summary in summaries.items():
        assert np.shares_memory(summary.rows.key, acc._held[k].key)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        stored.write_resume_state(f, {0: acc.state()})
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for k, want in acc.summaries.items():
            rows = f[f"summaries/layer0/k{k}/by_neuron"]
            for name in ("key", "count"):
                top = int(getattr(want.rows, name).max())
                assert rows[name].dtype == next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64)
                                                if top <= np.iinfo(t).max), (k, name, top)
            got = stored._summary_parts(f, 0, k)[0]
            for name in ("offsets", "key", "count"):
                np.testing.assert_array_equal(getattr(got.rows, name), getattr(want.rows, name), err_msg=name)
            np.testing.assert_array_equal(got.delta, want.delta)
            assert _as_dict(got.table) == _as_dict(summaries[k].table)
    assert repeat == 1 or max(int(s.rows.count.max()) for s in acc.summaries.values()) > 255


def test_shards_merge_then_second_pass_is_exact(tmp_path, corpus):  # noqa: F811
    model = _opt(tmp_path, "opt")
    exact = _config(model, corpus, tmp_path / "exact.h5", ngrams="exact")
    runner.record(exact, **QUIET)
    shards = []
    for i in range(3):
        shard = _config(model, corpus, tmp_path / f"s{i}.h5", shard=f"{i}/3", ngrams="bounded",
                        summary_capacity=8)  # small enough to cut possible candidates: pass 2 has work
        runner.record(shard, **QUIET)
        shards.append(shard.out)
    with open_counts(shards[0]) as counts, pytest.raises(StoreError, match="second pass"):
        counts.ngram_table(0, 3)  # cut (trigrams are the most varied): unreadable before pass 2
    merged = merge_stores(shards, tmp_path / "merged.h5", ngram_memory=1 << 20)
    with pytest.raises(StoreError, match="ngram_mode"):
        merge_stores([exact.out, shards[0]], tmp_path / "mixed.h5", ngram_memory=1 << 20)
    assert "second pass not run" in describe_store(merged)["ngram_mode"]
    assert main(["analyze", str(merged), "--out", str(tmp_path / "report"), "--no-suppression"]) == 2
    assert main(["second-pass", str(merged), "--no-progress"]) == 0
    assert "second pass done" in describe_store(merged)["ngram_mode"]
    with h5py.File(merged, "r") as f:
        assert f["counted/layer0/k3/counted_neurons"][()].any() and not f["counted"].attrs["empty_plan"]
    assert_same_ngram_results(_results(exact.out), _results(merged), expect_all_certified=False)
    with pytest.raises(StoreError, match="no second pass"):
        second_pass(SecondPassConfig(store=exact.out, progress=False), **QUIET)


@pytest.mark.parametrize("capacity", [2048, 64])
def test_planted_opt_bounded_equals_exact_with_suppression(tmp_path, capacity):
    from fastneurons.demo.command import build_demo_model, check_planted, format_checks, frequent_tokens
    from fastneurons.demo.stdlib_text import stdlib_text
    from fastneurons.models.architectures import ModelWeights
    from fastneurons.models.loading import gpt2_tokenizer, load_model
    from fastneurons.config import RecordConfig

    corpus = stdlib_text(tmp_path / "stdlib", max_bytes=150_000)
    spec = build_demo_model(tmp_path / "model", frequent_tokens(corpus, gpt2_tokenizer(), count=9), 128, 0)
    loaded = load_model(str(tmp_path / "model"))
    weights = ModelWeights(loaded.model, loaded.arch)
    results = {}
    for mode in ("exact", "bounded"):
        out = tmp_path / f"{mode}.h5"
        runner.record(RecordConfig(model=str(tmp_path / "model"), corpus=[str(p) for p in corpus], out=str(out),
                                   tokens="20k", seq_len=128, full_length=True, progress=False, ngrams=mode,
                                   summary_capacity=capacity), **QUIET)
        with open_counts(out) as counts:
            results[mode] = analyze_counts(counts, weights=weights)
    checks = check_planted(results["bounded"], spec, 128)
    assert all(c.ok for c in checks), format_checks(checks)
    exact, bounded = results["exact"], results["bounded"]
    assert_same_ngram_results(exact, bounded, expect_all_certified=False)
    # the summaries were pruned (more n-grams than the capacity), and the detectors still came out certified
    assert any(bounded.coverage[k][layer].certified < bounded.coverage[k][layer].neurons_with_mass
               for k in bounded.orders for layer in bounded.ngram_layers)
    assert all(bounded.detectors[k][layer].num_uncertain == 0 for k in bounded.orders for layer in bounded.ngram_layers)
    for layer, e in exact.suppression.items():
        b = bounded.suppression[layer]
        assert b.num_suppressing == e.num_suppressing and b.num_detectors == e.num_detectors
        np.testing.assert_array_equal(b.trigger_percentile, e.trigger_percentile)
    assert bounded.suppression_overall.fraction_suppressing == exact.suppression_overall.fraction_suppressing


def test_a_store_whose_runs_vanish_while_read_stays_a_consistent_snapshot(tmp_path, corpus, monkeypatch):  # noqa: F811
    """Reading a partial store while its recording compacts or finishes: the snapshot it opened, never an HDF5 error."""
    model = _opt(tmp_path, "opt")
    part = _config(model, corpus, tmp_path / "part.h5", ngram_memory="1K", ngrams="exact")
    interrupt_after_commits(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        runner.record(part, **QUIET)
    with open_counts(part.out) as before:
        expected = [array.copy() for array in before.ngram_seen(1)]
    with open_counts(part.out) as counts:  # a reader holds the store and its runs from the moment it opens
        assert not counts.complete
        for run in (tmp_path / "part.h5.runs").iterdir():  # what finalize does to the runs
            run.unlink()
        for got, want in zip(counts.ngram_seen(1), expected):  # the snapshot it opened, unchanged
            np.testing.assert_array_equal(got, want)
