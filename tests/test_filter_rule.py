"""The filter's default threshold rule: median + k * 1.4826 * MAD of the calibration magnitudes, per bucket."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from copyguard.mitigation.magnitude import robust_threshold
from copyguard.pipelines.lab.filter_rules import RULES, rule_table
from copyguard.pipelines.lab.filter_rules import main as filter_rules_main
from copyguard.train.config import FilterConfig
from copyguard.train.mem_filter import (
    MagnitudeFilter,
    bucket_thresholds,
    calibrated_threshold,
    timestep_bucket,
)


def test_robust_threshold_is_median_plus_k_scaled_mads() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    assert robust_threshold(values, 2.0) == pytest.approx(3.0 + 2.0 * 1.4826)
    assert robust_threshold([5.0, 5.0, 5.0], 6.0) == 5.0
    # computed in float64 whatever the input: float32 cannot hold this median (2^24 + 1)
    assert robust_threshold(np.array([2.0**24, 2.0**24 + 2], dtype=np.float32), 0.0) == 2.0**24 + 1
    with pytest.raises(ValueError, match="^robust_threshold of no values$"):
        robust_threshold([], 1.0)


def test_default_filter_is_on_with_the_mad_rule() -> None:
    spec = FilterConfig()
    assert spec.enabled and spec.rule == "mad" and spec.threshold is None


def _clean(rng: np.random.Generator, n: int) -> np.ndarray:
    """Magnitudes with no memorization signal: right-skewed (gamma), as text-conditional magnitudes are."""
    return rng.gamma(shape=8.0, scale=0.1, size=n)


def test_mad_rule_drops_almost_nothing_without_a_signal_and_the_outliers_with_one() -> None:
    rng = np.random.default_rng(0)
    spec = FilterConfig()
    calibration = _clean(rng, 400)
    tau = calibrated_threshold(calibration, spec)
    clean = _clean(rng, 20_000)
    p99 = calibrated_threshold(calibration, FilterConfig(rule="percentile", percentile=99))
    assert (clean >= tau).mean() < 0.005  # a percentile rule always drops its share (1% at p99)
    assert (clean >= p99).mean() > 2 * (clean >= tau).mean()
    # memorized samples: several times the typical magnitude (Wen et al., ICLR 2024), 3% of the calibration
    memorized = 4.0 * _clean(rng, 12)
    tau_with = calibrated_threshold(np.concatenate([calibration, memorized]), spec)
    assert tau_with < 1.1 * tau  # a few outliers barely move the median and the MAD
    assert (4.0 * _clean(rng, 1000) >= tau_with).mean() > 0.9


def test_buckets_use_the_rule_per_bucket_and_fall_back_to_the_global_one() -> None:
    rng = np.random.default_rng(1)
    spec = FilterConfig(mads=3.0)
    low, high = _clean(rng, 100), 3.0 * _clean(rng, 100)  # the magnitude's scale depends on t
    sparse = _clean(rng, 5)
    mags = [*low, *high, *sparse]
    ts = [50] * 100 + [550] * 100 + [950] * 5
    glob, per = bucket_thresholds(mags, ts, spec, buckets=3, num_train_timesteps=1000)
    assert per[0] == pytest.approx(robust_threshold(low, 3.0))
    assert per[1] == pytest.approx(robust_threshold(high, 3.0))
    assert per[2] == glob == pytest.approx(robust_threshold(mags, 3.0))  # 5 < MIN_BUCKET_SAMPLES


def test_calibrated_filter_reports_its_rule() -> None:
    mags = list(_clean(np.random.default_rng(2), 50))
    flt = MagnitudeFilter(FilterConfig(calibrate_steps=1, timestep_buckets=1, mads=4.0))  # the defaults
    flt.record(1, [f"k{i}" for i in range(50)], [10] * 50, mags, [1.0] * 50)
    flt.end_step(0)
    assert flt.source == "median + 4 MAD of 50 magnitudes, recomputed every 20 steps over the last 1 step"
    flt = MagnitudeFilter(FilterConfig(calibrate_steps=1, timestep_buckets=1, mads=4.0, recalibrate_every=0))
    flt.record(1, [f"k{i}" for i in range(50)], [10] * 50, mags, [1.0] * 50)
    flt.end_step(0)
    assert flt.threshold == pytest.approx(robust_threshold(mags, 4.0))
    assert flt.source == "median + 4 MAD of 50 magnitudes"
    flt = MagnitudeFilter(
        FilterConfig(
            calibrate_steps=1, timestep_buckets=1, rule="percentile", percentile=97.5, recalibrate_every=0
        )
    )
    flt.record(1, [f"k{i}" for i in range(50)], [10] * 50, mags, [1.0] * 50)
    flt.end_step(0)
    assert flt.threshold == pytest.approx(np.percentile(mags, 97.5))
    assert flt.source == "p97.5 of 50 magnitudes"


def test_timestep_buckets_are_equal_width_and_clipped_to_the_range() -> None:
    """``floor(t * N / T)``; a timestep outside [0, T) (a scheduler's T itself, a negative one) falls in
    the nearest end bucket, never outside the N thresholds."""
    got = timestep_bucket(np.array([0, 99, 100, 999, 1000, 1500, -3]), 10, 1000)
    assert got.tolist() == [0, 0, 1, 9, 9, 9, 0]
    assert timestep_bucket(torch.tensor([250, 500]), 4, 1000).tolist() == [1, 2]


def test_a_checkpoint_from_before_recalibration_loads_with_its_calibration_as_the_oldest() -> None:
    """State written before timestep buckets and recalibration (no ``thresholds``, ``calibration_t``,
    ``calibration_step``, ``recalibrations``) loads: one global threshold, every calibration magnitude
    dated step 0, no recalibration yet."""
    legacy = {"threshold": 2.5, "source": "p99 of 3 magnitudes", "calibration": [1.0, 2.0, 3.0],
              "calibrated_at": 5, "seen": 40, "filtered": 2, "key_counts": {"a": 2}}  # fmt: skip
    flt = MagnitudeFilter(FilterConfig())
    flt.load_state_dict(legacy)
    assert flt.threshold == 2.5 and flt.thresholds is None
    assert flt.calibration_step == [0, 0, 0] and flt.calibration_t == []
    assert flt.recalibrations == 0 and flt.seen == 40 and flt.filtered == 2
    assert flt.summary()["samples_filtered"] == 2 and flt.summary()["top_keys"] == [{"key": "a", "times": 2}]


def test_rule_table_counts_clean_and_duplicated_draws_per_rule() -> None:
    rng = np.random.default_rng(3)
    n_clean, n_dup = 2000, 200
    data = {
        "magnitude": np.concatenate([_clean(rng, n_clean), 4.0 * _clean(rng, n_dup)]),
        "timestep": rng.integers(0, 1000, n_clean + n_dup),
        "copies": np.r_[np.ones(n_clean, int), np.full(n_dup, 25)],
        "num_train_timesteps": 1000,
    }
    table = rule_table(data, calibration=1000)
    mad = table["mad_k4 (default)"]
    assert mad["clean_dropped_pct"] < 1.0 and mad["copies_25_dropped_pct"] > 80.0
    assert mad["duplicated_dropped_pct"] == mad["copies_25_dropped_pct"]
    # a looser k drops more of both; a percentile drops its share of everything it was calibrated on
    assert table["mad_k3"]["copies_25_dropped_pct"] >= mad["copies_25_dropped_pct"]
    assert table["mad_k3"]["clean_dropped_pct"] >= mad["clean_dropped_pct"]
    p95 = table["p95"]
    share = (n_clean * p95["clean_dropped_pct"] + n_dup * p95["duplicated_dropped_pct"]) / (n_clean + n_dup)
    assert 3.0 < share < 7.0


def _drifting_run(
    recalibrate_every: int, steps: int = 200, batch: int = 32
) -> tuple[float, float, MagnitudeFilter]:
    """A fine-tune's magnitudes: the clean ones' scale grows 1 -> 2.5 over ``steps`` (the text conditioning
    of the new data grows), and 1 sample in 16 is memorized at 4x the current scale. Driven as the trainer
    drives the filter (keep, record with the 1-based step, end_step with the 0-based one). Returns the
    shares of clean and memorized draws dropped."""
    rng = np.random.default_rng(7)
    flt = MagnitudeFilter(
        FilterConfig(calibrate_steps=10, timestep_buckets=1, recalibrate_every=recalibrate_every)
    )
    dropped = {True: [0, 0], False: [0, 0]}
    for step in range(steps):
        scale = 1.0 + 1.5 * step / steps
        memorized = np.arange(batch) % 16 == 0
        mags = scale * _clean(rng, batch) * np.where(memorized, 4.0, 1.0)
        keep = flt.keep(torch.tensor(mags, dtype=torch.float32))
        flt.record(
            step + 1, [f"s{step}_{i}" for i in range(batch)], [500] * batch, mags.tolist(), keep.tolist()
        )
        flt.end_step(step)
        if flt.calibrated_at is not None and step + 1 > flt.calibrated_at:
            for mem, k in zip(memorized, keep.tolist(), strict=True):
                dropped[bool(mem)][0] += 1
                dropped[bool(mem)][1] += int(k < 0.5)
    return dropped[False][1] / dropped[False][0], dropped[True][1] / dropped[True][0], flt


def test_recalibration_follows_drifting_magnitudes_and_still_drops_the_outliers() -> None:
    clean_fixed, mem_fixed, fixed = _drifting_run(0)
    clean_re, mem_re, flt = _drifting_run(5)
    assert fixed.recalibrations == 0 and clean_fixed > 0.1  # the first calibration goes stale
    assert flt.recalibrations == (200 - 10) // 5 and clean_re < 0.02
    assert mem_re > 0.8  # the memorized minority still stands out of the moving bulk
    assert "recomputed every 5 steps over the last 10 steps" in flt.source
    # the window is the last calibrate_steps steps: the thresholds are the rule over exactly those
    assert set(flt.calibration_step) == set(range(191, 201)) and len(flt.calibration) == 10 * 32
    assert flt.threshold == pytest.approx(robust_threshold(flt.calibration, 4.0))


def test_recalibrating_filter_resumes_exactly() -> None:
    spec = FilterConfig(calibrate_steps=3, timestep_buckets=2, recalibrate_every=2)
    rng = np.random.default_rng(11)
    batches = [(list((1 + s / 10) * _clean(rng, 24)), list(rng.integers(0, 1000, 24))) for s in range(12)]

    def run(flt: MagnitudeFilter, steps: range) -> list:
        out = []
        for step in steps:
            mags, ts = batches[step]
            keep = flt.keep(torch.tensor(mags), torch.tensor(ts)).tolist()
            flt.record(step + 1, [f"k{i}" for i in range(24)], ts, mags, keep)
            flt.end_step(step)
            out.append((flt.threshold, flt.thresholds, keep))
        return out

    whole = MagnitudeFilter(spec)
    straight = run(whole, range(12))
    first = MagnitudeFilter(spec)
    head = run(first, range(6))
    resumed = MagnitudeFilter(spec)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + run(resumed, range(6, 12)) == straight
    assert resumed.summary() == whole.summary() and whole.recalibrations == 4


def test_the_summary_names_the_threshold_source_and_every_count() -> None:
    assert MagnitudeFilter(FilterConfig(threshold=2.0)).source == "fixed"
    flt = MagnitudeFilter(FilterConfig(calibrate_steps=1, timestep_buckets=1, recalibrate_every=1))
    assert flt.source == "calibrating"
    mags = list(_clean(np.random.default_rng(3), 20))
    for step in range(3):
        flt.record(step + 1, [f"k{i}" for i in range(20)], [10] * 20, mags, [1.0] * 19 + [0.0])
        flt.end_step(step)
    summary = flt.summary()
    assert list(summary) == [
        "enabled", "threshold", "timestep_buckets", "bucket_thresholds", "threshold_source",
        "calibrated_at_step", "recalibrations", "samples_seen", "samples_filtered", "filtered_share",
        "unique_keys_filtered", "top_keys",
    ]  # fmt: skip
    assert summary["recalibrations"] == flt.recalibrations == 2
    assert summary["threshold_source"].startswith("median + 4 MAD of 20 magnitudes")


def test_record_counts_every_batch_and_logs_rounded_rows() -> None:
    """``seen`` adds up over micro-batches; a dropped sample's row carries its magnitude and threshold rounded
    to 6 decimals; a bucketed calibration names its buckets in the source."""
    flt = MagnitudeFilter(FilterConfig(threshold=1.0))
    flt.record(1, ["a", "b"], [10, 20], [0.5, 1.23456789], [1.0, 0.0])
    rows = flt.record(1, ["c"], [30], [2.0000004], [0.0])
    assert flt.seen == 3 and flt.filtered == 2
    assert rows == [{"key": "c", "step": 1, "timestep": 30, "magnitude": 2.0, "threshold": 1.0}]
    first = MagnitudeFilter(FilterConfig(threshold=1.0))
    (row,) = first.record(1, ["b"], [20], [1.23456789], [0.0])
    assert row["magnitude"] == 1.234568
    flt = MagnitudeFilter(FilterConfig(calibrate_steps=1, timestep_buckets=2, recalibrate_every=0))
    mags = list(_clean(np.random.default_rng(5), 40))
    flt.record(1, [f"k{i}" for i in range(40)], [100] * 20 + [900] * 20, mags, [1.0] * 40)
    flt.end_step(0)
    assert flt.source == "median + 4 MAD of 40 magnitudes in 2 timestep buckets"


def test_filter_rules_cli_records_a_result_with_its_commit_and_machine(tiny_sd_folder, lab_tiny_data,
                                                                        tmp_path) -> None:  # fmt: skip
    """``python -m copyguard.pipelines.lab.filter_rules`` measures a model's training magnitudes and writes a
    result the docs renderer can date: the command, commit and machine, one row per rule."""
    args = ["--model", str(tiny_sd_folder), "--input", str(lab_tiny_data / "*.tar"), "--quick",
            "--name", "rules_probe", "--machine", "probe", "--out", str(tmp_path), "--note", "n"]  # fmt: skip
    assert filter_rules_main(args) == 0
    result = json.loads((tmp_path / "probe" / "rules_probe.json").read_text())
    assert result["benchmark"] == "rules_probe" and result["quick"] is True and result["note"] == "n"
    assert "commit" in result["git"] and result["machine"]["tag"] == "probe"
    assert result["command"].startswith("python -m copyguard.pipelines.lab.filter_rules --model")
    assert result["draws"] == 1 and set(result["rules"]) == set(RULES)
    labelled = [json.loads(x) for x in (lab_tiny_data / "ground_truth.jsonl").read_text().splitlines()]
    assert 0 < result["samples"] <= len(labelled)
    clean = result["rules"]["mad_k4 (default)"]["clean_dropped_pct"]
    assert 0.0 <= clean <= 100.0
