"""Cost measurement: :mod:`copyguard.mitigation.evaluation.costs`, :mod:`copyguard.train.filter_cost` and the
timing helpers of :mod:`copyguard.common.timing`, on tiny SD components (no trained model)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from copyguard.common import timing
from copyguard.curation.index import TrainingIndex
from copyguard.mitigation.evaluation import costs
from tests.tiny_sd import tiny_pipeline, tiny_unet

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MEMORIZED = "a photo of the cat"


class LinearEmbedder(torch.nn.Module):
    """A differentiable stand-in for the torch SSCD: images [n, 3, 16, 16] in [0, 1] -> unit [n, 32]."""

    name, input_size, dim = "linear-sscd", 16, 32

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(3 * 16 * 16, 32, generator=torch.Generator().manual_seed(3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize((images.float() - 0.5).flatten(1) @ self.proj, dim=1)


@pytest.fixture(scope="module")
def setup() -> tuple:
    emb = LinearEmbedder()
    vectors = F.normalize(torch.randn(8, 32, generator=torch.Generator().manual_seed(1)), dim=1).numpy()
    entries = [
        {"key": f"k{i}", "caption": f"c{i}", "dup_caption": MEMORIZED, "dup_caption_count": 25}
        for i in range(8)
    ]
    index = TrainingIndex.build(
        vectors.astype(np.float32), entries, {"name": emb.name, "dim": 32, "input_size": 16}
    )
    return tiny_pipeline(), index, emb


def test_random_weights_times_every_variant_with_the_gate_above_the_unique_prompt(setup: tuple) -> None:
    pipe, index, emb = setup  # a plain StableDiffusionPipeline: measured through an AMG pipeline of its parts
    r = costs.measure_random_weights(pipe, index, size=16, steps=3, rounds=2, popt_iters=1, embedder=emb)
    variants = {*costs.DETECTION_VARIANTS, "plain_unique", "amg_gated_unique", "amg_ungated_unique"}
    variants |= {"plain_memorized", "amg_memorized", "prompt_opt_worst_only", "plain_unique_short"}
    assert set(r["seconds_all"]) == set(r["seconds_median"]) == variants
    assert all(len(v) == 2 and min(v) > 0 for v in r["seconds_all"].values())
    assert r["memorized_case"].startswith("forced worst case") and r["l_target"] == 0.5 * r["gate_threshold"]
    assert r["generation_50_steps_how"] == "extrapolated from 2 and 3 steps"
    d = r["details"]
    gated = d["amg_gated_unique"]  # below the raised gate: no AMG work at all
    assert gated["flagged"] is False and gated["magnitude"] < r["gate_threshold"]
    assert gated["amg_stats"]["checks"] == gated["steps_g_spe"] == 0
    worst = d["amg_memorized"]  # every term at every step
    assert worst["steps_g_spe"] == worst["steps_g_dup"] == worst["steps_g_sim"] == 3
    assert worst["amg_stats"]["grads"] == 3 and d["plain_memorized"] is None
    assert d["prompt_opt_worst_only"]["iterations"] == 1
    assert set(r["goals"]) == {"amg_gated_unflagged_le_1.15", "amg_memorized_le_3"}
    assert all(v > 0 for v in r["ratios"].values()) and "amg_worst_vs_plain" not in r["ratios"]
    assert costs.parameter_counts(pipe)["unet"] == sum(p.numel() for p in pipe.unet.parameters())


def test_a_real_memorized_prompt_adds_calibrated_prompt_opt_and_worst_case_amg(setup: tuple) -> None:
    pipe, index, emb = setup
    variants, _ = costs.cost_variants(
        pipe,
        index,
        memorized=MEMORIZED,
        steps=2,
        size=16,
        gate=0.5,
        l_target=0.2,
        forced_memorized=False,
        measure_50=True,
        embedder=emb,
    )
    assert {"prompt_opt_calibrated", "amg_worst_memorized", "plain_unique_50"} <= set(variants)
    assert "plain_unique_short" not in variants
    assert variants["prompt_opt_calibrated"]().iterations <= 10
    assert variants["plain_unique_50"]().images.shape == (1, 16, 16, 3)


def test_ratios_are_medians_of_per_round_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    times = {
        "unet_cfg_eval": [0.1, 0.1],
        "detect_first_step_1prompt": [0.2, 0.3],
        "detect_first_step_batch8": [0.8, 1.6],
        "plain_unique": [1.0, 2.0],
        "plain_unique_short": [0.5, 1.0],
        "amg_gated_unique": [1.1, 2.6],  # per round 1.1 and 1.3; the ratio of the medians would be 1.233
        "amg_ungated_unique": [2.0, 4.0],
        "plain_memorized": [1.0, 1.0],
        "amg_memorized": [3.0, 3.0],
        "prompt_opt_worst_only": [2.2, 2.2],
    }
    monkeypatch.setattr(costs, "cost_variants", lambda pipe, index, **kw: ({}, lambda: None))
    monkeypatch.setattr(costs, "time_rounds", lambda variants, rounds, device, describe: (times, {}))
    r = costs.measure_model(
        None,
        None,
        rounds=2,
        device="cpu",
        memorized="m",
        steps=3,
        size=16,
        gate=1.0,
        l_target=0.5,
        forced_memorized=True,
        short_steps=2,
    )
    q = r["ratios"]
    assert q["amg_gated_unflagged_vs_plain"] == pytest.approx(1.2)
    assert q["detect_1prompt_vs_unet_cfg"] == pytest.approx(2.5)
    assert q["detect_batch8_per_prompt_vs_unet_cfg"] == pytest.approx(1.5)
    assert q["amg_ungated_unique_vs_plain"] == pytest.approx(2.0)
    gen50 = 1.5 + 47 * (1.5 - 0.75)  # plain at 3 steps plus 47 steps of (3-step - 2-step) time
    assert r["generation_50_steps_s"] == pytest.approx(gen50)
    assert q["prompt_opt_iteration_vs_unet_cfg"] == pytest.approx(2.0)  # 2.2 s / (10 + 1) iterations
    assert q["prompt_opt_worst_10iter_vs_50step_generation"] == pytest.approx(0.2 * 11 / gen50)
    assert r["goals"] == {"amg_gated_unflagged_le_1.15": False, "amg_memorized_le_3": True}


def test_time_rounds_alternates_stops_early_and_describes_first_results() -> None:
    order: list[str] = []
    calls = {k: (lambda k=k: order.append(k) or len(order)) for k in ("a", "b")}
    times, described = timing.time_rounds(calls, 3, describe=lambda out: out * 10)
    assert order == ["a", "b"] * 3 and all(len(v) == 3 for v in times.values())
    assert described == {"a": 10, "b": 20}  # the first round's results
    stops = itertools.count()
    times, _ = timing.time_rounds(calls, 5, stop=lambda: next(stops) >= 1)
    assert [len(v) for v in times.values()] == [2, 2]
    assert timing.median_ratio([2.0, 3.0, 9.0], [1.0, 0.0, 3.0]) == 2.5  # the zero round is skipped
    assert timing.median_ratio([1.0], [0.0]) is None


def test_filter_steps_make_the_unet_calls_of_each_kind_and_are_timed() -> None:
    from copyguard.train.filter_cost import KINDS, filter_step_costs, filter_steps

    unet = tiny_unet().train()
    batches: list[int] = []
    forward = unet.forward
    unet.forward = lambda x, *a, **k: batches.append(len(x)) or forward(x, *a, **k)
    steps = filter_steps(unet, batch=2, size=64)
    before = [p.detach().clone() for p in unet.parameters()]
    for kind, calls in (("none", [2]), ("batched", [4]), ("separate", [2, 2])):  # (uncond, cond) in one call
        batches.clear()
        steps[kind]()
        assert batches == calls, kind
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters(), strict=True))  # AdamW stepped
    r = filter_step_costs(unet, batch=2, size=64, rounds=2, steps=2)
    assert set(r["step_s_median"]) == set(KINDS) == {"none", "batched", "separate"}
    assert all(len(v) == 2 and min(v) > 0 for v in r["step_s_per_round"].values())
    assert r["ratio_batched_vs_none"] > 0 and r["ratio_separate_vs_none"] > 0


def test_detection_costs_per_prompt_at_batch_1_and_8(setup: tuple) -> None:
    pipe = setup[0]
    row = costs.detection_costs(pipe, 16, rounds=2)
    assert set(row) == {"unet_cfg_call_ms"} | {
        f"batch{b}{s}" for b in (1, 8) for s in ("", "_vs_unet_cfg_call", "_runs")
    }
    assert row["batch1_runs"] == row["batch8_runs"] == 2 and row["unet_cfg_call_ms"] > 0
    for b in (1, 8):
        assert row[f"batch{b}_vs_unet_cfg_call"] == pytest.approx(row[f"batch{b}"] / row["unet_cfg_call_ms"])
