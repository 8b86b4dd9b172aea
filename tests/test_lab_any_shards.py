"""``lab-model`` on any shards, without training: duplicated pairs derived from the data, a card for every
summary shape, and the trained model kept when the measurement or the card fails.

The model these tests measure is the seeded tiny SD folder of :mod:`tests.tiny_sd` (16 px), standing in
for a trained lab model, so nothing here trains.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from copyguard.common.config import apply_overrides, validate
from copyguard.common.errors import UsageError
from copyguard.pipelines.lab import card as card_module
from copyguard.pipelines.lab import run as run_module
from copyguard.pipelines.lab.card import render_model_card, write_memorization_chart
from copyguard.pipelines.lab.config import LabConfig
from copyguard.pipelines.lab.data import load_lab_data
from copyguard.pipelines.lab.evaluate import NO_DUPLICATES, select_prompts
from tests.helpers import jpeg_bytes, write_tar

pytest.importorskip("diffusers")


def _shards(folder: Path, samples: list[tuple[str, str, bytes]], truth: list[dict] | None = None) -> str:
    """One shard of ``(key, caption, image bytes)`` and optionally a ``ground_truth.jsonl`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    members = []
    for key, caption, image in samples:
        members += [(f"{key}.jpg", image), (f"{key}.txt", caption.encode())]
    write_tar(folder / "shard-000000.tar", members)
    if truth is not None:
        (folder / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in truth))
    return str(folder / "*.tar")


def _plain_samples(copies: tuple[int, ...], uniques: int = 6) -> list[tuple[str, str, bytes]]:
    """Unique samples plus, per count c, one pair repeated c times (same bytes, caption varying in case
    and whitespace), one image reused under other captions and one caption over other images."""
    out = [(f"u{i:03d}", f"unique caption number {i}", jpeg_bytes(100 + i, 16)) for i in range(uniques)]
    for n, c in enumerate(copies):
        image = jpeg_bytes(500 + n, 16)
        out += [
            (f"d{c}_{j:03d}", ("Pair  %d caption" if j % 2 else "pair %d CAPTION ") % c, image)
            for j in range(c)
        ]
    shared = jpeg_bytes(900, 16)
    out += [("img_a", "one image, caption a", shared), ("img_b", "one image, caption b", shared)]
    out += [
        ("cap_a", "a template caption", jpeg_bytes(901, 16)),
        ("cap_b", "a template caption", jpeg_bytes(902, 16)),
    ]
    return out


def test_without_ground_truth_pairs_come_from_bytes_and_captions(tmp_path: Path) -> None:
    data = load_lab_data(_shards(tmp_path, _plain_samples((2, 60))), 16, 0, 0)
    assert data.copies["d2_000"] == data.copies["d2_001"] == 2
    assert {data.copies[k] for k in data.keys if k.startswith("d60_")} == {60}
    assert {data.copies[k] for k in ("img_a", "img_b", "cap_a", "cap_b")} == {1}  # partly duplicated
    assert data.is_unique("u000") and not data.is_unique("img_a")
    assert data.info()["duplicated_samples_by_copies"] == {"2": 2, "60": 60}
    assert data.info()["ground_truth"] == "derived from the shards"
    assert data.info()["kinds"] == {"unique": 6, "dup_pair": 62, "partial_dup": 4}
    prompts = select_prompts(data, unique_prompts=4, seed=0)
    assert [p.copies for p in prompts] == [2, 60, 1, 1, 1, 1]


def test_documented_ground_truth_schema_without_copies(tmp_path: Path) -> None:
    """Issue 16: rows ``{key, image_group, caption_group, kind}``, no ``copies``, no ``dup_pair`` kind."""
    samples = [(f"u{i}", f"caption {i}", jpeg_bytes(i, 16)) for i in range(5)]
    # a near-duplicated pair: distinct bytes (re-encodes), distinct captions, grouped by the ground truth
    samples += [(f"n{j}", f"near copy {j}", jpeg_bytes(50, 16, quality=60 + j)) for j in range(3)]
    truth = [
        {"key": f"u{i}", "image_group": f"u{i}", "caption_group": f"u{i}", "kind": "original"}
        for i in range(5)
    ]
    truth += [
        {"key": f"n{j}", "image_group": "n0", "caption_group": "n0", "kind": "near_dup"} for j in range(3)
    ]
    data = load_lab_data(_shards(tmp_path, samples, truth), 16, 0, 0)
    assert [data.copies[f"n{j}"] for j in range(3)] == [3, 3, 3]
    assert data.info()["kinds"] == {"original": 5, "near_dup": 3}
    prompts = select_prompts(data, unique_prompts=10, seed=0)
    assert [(p.copies, p.group) for p in prompts if p.copies > 1] == [(3, "n0")]
    assert sum(p.copies == 1 for p in prompts) == 5


# ------------------------------------------------------------------------------------------- the card
def _bucket(mean: float, prompts: int) -> dict:
    own = {"mean": mean, "top5pct": mean, "top1": mean, "pct_gt_0.4": 50.0, "pct_gt_0.5": 25.0}
    return {"generations": 4 * prompts, "prompts": prompts, "sscd_own": own, "nl2": {"mean": 2.0, "min": 1.0}}


NORMAL = {
    "threshold": 0.4,
    "resolution": 32,
    "eval": {"seeds": 4, "steps": 20, "guidance_scale": 7.5},
    "by_copies": {"2": _bucket(0.3, 1), "25": _bucket(0.8, 1), "unique": _bucket(0.1, 16)},
    "duplicated": {"measured": True, "copies": [2, 25], "prompts": 2},
    "dup_ge25": _bucket(0.8, 1),
    "all_dup": _bucket(0.55, 2),
    "magnitude": {"auc": 0.95, "positives": 1, "negatives": 16},
    "fid": {"fid": None, "reason": "no held-out images"},
    "calibration": {
        "threshold": 0.4,
        "vae_roundtrip": {"mean": 0.9, "p5": 0.8, "p50": 0.9, "p95": 1.0, "pct_gt_threshold": 100.0},
    },
    "generations": [{"group": "g", "copies": 2, "seed": 0, "sscd_own": 0.3, "nl2": 2.0}],
    "timings": {"total_s": 12.0},
}
NO_DUPS = {
    **{k: v for k, v in NORMAL.items() if k not in ("dup_ge25", "all_dup")},
    "by_copies": {"unique": _bucket(0.1, 16)},
    "duplicated": {"measured": False, "reason": NO_DUPLICATES},
    "magnitude": {"auc": None, "reason": "needs both duplicated (>= 25 copies) and unique prompts"},
}
ONLY_2_AND_60 = {  # no unique prompt at all, no >= 25 headline bucket (an older summary)
    "threshold": 0.4,
    "by_copies": {"60": _bucket(0.9, 1), "2": _bucket(0.2, 1)},
    "dup_ge25": {"generations": 0},
    "all_dup": _bucket(0.55, 2),
}


@pytest.mark.parametrize(
    "mem", [NORMAL, NO_DUPS, ONLY_2_AND_60, {}], ids=["normal", "no-dups", "2-and-60", "empty"]
)
def test_card_renders_every_summary_shape(mem: dict, tmp_path: Path) -> None:
    card = render_model_card("tiny", {}, mem, "x/*.tar")
    assert "## Memorization" in card
    write_memorization_chart(mem, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").is_file() == bool(mem.get("by_copies"))
    if mem is NO_DUPS:
        assert NO_DUPLICATES in card and "| unique |" in card
    if mem is ONLY_2_AND_60:
        table = card[card.index("| copies |") :]
        assert table.index("| 2 |") < table.index("| 60 |")
        assert "no unique prompts measured" in card
    if mem is NORMAL:
        assert "copies: **50.0 %**" in card and "ROC AUC 0.950" in card and "FID against" in card


# ----------------------------------------------------------------------- keep the model, --eval-only
def _cfg_overrides() -> list[str]:
    """Measure the 16 px tiny SD folder quickly: one seed, two DDIM steps, three unique prompts."""
    return [
        "lab.threads=1",
        "lab.device=cpu",
        "lab.presets.tiny.resolution=16",
        "lab.presets.tiny.eval.seeds=1",
        "lab.presets.tiny.eval.steps=2",
        "lab.presets.tiny.eval.unique_prompts=3",
        "lab.presets.tiny.eval.calibration_images=4",
    ]


def _cfg() -> LabConfig:
    return validate(LabConfig, apply_overrides({}, ["lab.preset=tiny", *_cfg_overrides()], "lab"), "lab")


def _fake_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace training by saving the tiny SD folder and ``lab_training.json``, as the trainer does."""
    from tests.tiny_sd import save_tiny_pipeline

    def train(cfg, pattern, out, *, resume=False, data=None):
        save_tiny_pipeline(out)
        info = {
            "preset": cfg.preset,
            "seed": cfg.seed,
            "data": data.info(),
            "timings": {"train_total_s": 1.0},
        }
        (Path(out) / "lab_training.json").write_text(json.dumps(info))
        return SimpleNamespace(timings=info["timings"])

    monkeypatch.setattr(run_module, "train_lab_model", train)


@pytest.mark.slow  # a real run killed and resumed, or a full lab/eval run: minutes
def test_card_failure_keeps_the_model_and_eval_only_reruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from copyguard.pipelines.cli import main

    pattern = _shards(tmp_path / "data", _plain_samples((2, 30)))
    out = tmp_path / "model"
    _fake_training(monkeypatch)

    def broken(*args, **kwargs):
        raise KeyError("sscd_own")

    monkeypatch.setattr(run_module, "render_model_card", broken)
    args = ["lab-model", "--input", pattern, "--output", str(out), "--preset", "tiny"]
    overrides = [a for o in _cfg_overrides() for a in ("--set", o)]
    assert main([*args, *overrides]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("copyguard")]
    assert len(err) == 1 and "writing the model card failed" in err[0] and "--eval-only" in err[0]
    for name in (
        "model_index.json",
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "lab_training.json",
    ):
        assert (out / name).exists(), name
    assert not (out / "README.md").exists()

    monkeypatch.setattr(run_module, "render_model_card", card_module.render_model_card)
    monkeypatch.setattr(run_module, "train_lab_model", lambda *a, **k: pytest.fail("--eval-only trained"))
    assert main([*args, "--eval-only", *overrides]) == 0
    mem = json.loads((out / "memorization.json").read_text())
    assert sorted(mem["by_copies"]) == ["2", "30", "unique"] and mem["duplicated"]["copies"] == [2, 30]
    assert mem["magnitude"]["auc"] is not None
    assert "| 30 |" in (out / "README.md").read_text()


@pytest.mark.slow  # a real run killed and resumed, or a full lab/eval run: minutes
def test_no_duplicates_still_measures_unique_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pattern = _shards(tmp_path / "data", [(f"u{i}", f"caption {i}", jpeg_bytes(i, 16)) for i in range(6)])
    _fake_training(monkeypatch)
    result = run_module.run_lab_model(_cfg(), pattern, tmp_path / "model")
    mem = result["memorization"]
    assert mem["duplicated"] == {"measured": False, "reason": NO_DUPLICATES}
    assert list(mem["by_copies"]) == ["unique"] and mem["by_copies"]["unique"]["generations"] == 3
    assert "dup_ge25" not in mem and "calibration" in mem
    assert NO_DUPLICATES in (tmp_path / "model" / "README.md").read_text()


def test_data_problem_in_the_measurement_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every sample shares only its caption with another: neither a pair nor unique, nothing to measure
    samples = [(f"c{i}", "the same caption", jpeg_bytes(i, 16)) for i in range(3)]
    _fake_training(monkeypatch)
    out = tmp_path / "model"
    with pytest.raises(UsageError, match="nothing to measure.*trained model .* is kept"):
        run_module.run_lab_model(_cfg(), _shards(tmp_path / "data", samples), out)
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()  # card without figures
