"""Joint keep/drop policy, its reasons and summary; the curate config schema and its YAML defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from copyguard.curation.config import load_config
from copyguard.curation.curate_config import CurateConfig, PolicyConfig
from copyguard.curation.errors import ConfigError
from copyguard.curation.policy import decide, size_histogram, summarize

ROOT = Path(__file__).resolve().parent.parent


def _by_key(decisions):
    return {d.key: d for d in decisions}


def test_representative_highest_resolution_then_smallest_key() -> None:
    keys = ["d", "c", "b", "a", "e"]
    widths = [100, 200, 100, 200, 50]
    heights = [100, 100, 200, 100, 50]
    image_group = ["a", "a", "a", "a", "e"]
    caption_group = ["d", "c", "b", "a", "e"]
    out = _by_key(decide(keys, widths, heights, image_group, caption_group))
    # c, b and a all have 20000 px: the smallest key, a, wins; d (10000 px) is dropped too.
    assert out["a"].status == "kept" and out["a"].reason == "" and out["a"].representative == "a"
    for k in "bcd":
        assert (out[k].status, out[k].reason, out[k].representative) == ("duplicate", "image_duplicate", "a")
    assert out["e"].status == "kept"
    assert [d.key for d in decide(keys, widths, heights, image_group, caption_group)] == keys


def test_duplicated_caption_over_duplicated_images() -> None:
    keys = ["k1", "k2", "k3", "k4"]
    dims = {k: 64 for k in keys}
    image_group = {"k1": "k1", "k2": "k1", "k3": "k1", "k4": "k4"}
    caption_group = {"k1": "k1", "k2": "k1", "k3": "k3", "k4": "k1"}
    out = _by_key(decide(keys, dims, dims, image_group, caption_group))
    assert out["k1"].status == "kept"
    assert out["k2"].reason == "image_and_caption_duplicate" and out["k2"].representative == "k1"
    assert out["k3"].reason == "image_duplicate"
    assert out["k4"].status == "kept"  # same caption, different image: not a duplicate by itself


def _templated(n_images: int = 6):
    """Caption group 't' over n distinct images; image t0 also has a second copy 'x' with its own caption."""
    keys = [f"t{k}" for k in range(n_images)] + ["x"]
    image_group = [f"t{k}" for k in range(n_images)] + ["t0"]
    caption_group = ["t"] * n_images + ["x"]
    widths = [10] * n_images + [5]
    return keys, widths, widths, image_group, caption_group


def test_templated_caption_keep_cap_drop() -> None:
    args = _templated()
    keep = _by_key(decide(*args, PolicyConfig(template_policy="keep", template_min_images=5)))
    assert [keep[f"t{k}"].status for k in range(6)] == ["kept"] * 6
    assert keep["x"].reason == "image_duplicate" and keep["x"].representative == "t0"

    cap = _by_key(decide(*args, PolicyConfig(template_policy="cap", template_cap=2, template_min_images=5)))
    assert [cap[f"t{k}"].status for k in range(6)] == ["kept", "kept"] + ["duplicate"] * 4
    assert {cap[f"t{k}"].reason for k in range(2, 6)} == {"templated_caption_cap"}
    assert cap["t3"].representative == ""
    assert cap["x"].reason == "image_duplicate"

    drop = _by_key(decide(*args, PolicyConfig(template_policy="drop", template_min_images=5)))
    assert {drop[f"t{k}"].reason for k in range(1, 6)} == {"templated_caption_drop"}
    # t0's image survives through its other copy x, whose caption is not templated: t0 is that image's
    # duplicate (the image reason comes first: the caption alone did not cost the image).
    assert drop["x"].status == "kept"
    assert (drop["t0"].reason, drop["t0"].representative) == ("image_duplicate", "x")

    # Below template_min_images distinct images nothing is templated.
    few = _by_key(decide(*args, PolicyConfig(template_policy="drop", template_min_images=7)))
    assert all(d.status == "kept" for k, d in few.items() if k != "x")


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="widths has 1 values for 2 keys"):
        decide(["a", "b"], [1], [1, 1], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="no value for key 'b'"):
        decide(["a", "b"], {"a": 1}, [1, 1], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        decide(["a", "a"], [1, 1], [1, 1], ["a", "a"], ["a", "a"])


def test_summary_counts_and_histograms() -> None:
    decisions = decide(
        *_templated(), PolicyConfig(template_policy="cap", template_cap=2, template_min_images=5)
    )
    s = summarize(decisions, top_groups=1)
    assert s["samples"] == 7 and s["status"] == {"duplicate": 5, "kept": 2}
    assert s["reason"] == {"image_duplicate": 1, "templated_caption_cap": 4}
    assert s["image_group_sizes"] == {"1": 5, "2": 1} and s["caption_group_sizes"] == {"1": 1, "5-8": 1}
    assert s["top_caption_groups"] == [{"group": "t", "size": 6}]
    assert size_histogram([1, 2, 3, 4, 5, 9, 16, 17]) == {
        "1": 1,
        "2": 1,
        "3-4": 2,
        "5-8": 1,
        "9-16": 2,
        "17-32": 1,
    }


def test_curate_yaml_equals_schema_defaults() -> None:
    data = yaml.safe_load((ROOT / "configs" / "curate.yaml").read_text())
    assert set(data) == {"curate"}
    assert CurateConfig.model_validate(data["curate"]) == CurateConfig()
    assert data["curate"] == CurateConfig().model_dump(mode="json")


def test_curate_config_errors_name_the_key(tmp_path: Path) -> None:
    path = ROOT / "configs" / "curate.yaml"
    with pytest.raises(ConfigError, match=r"curate\.minhash\.threshold"):
        load_config(CurateConfig, "curate", path, ["curate.minhash.threshold=1.5"])
    with pytest.raises(ConfigError, match=r"curate\.policy\.template_policy"):
        load_config(CurateConfig, "curate", path, ["curate.policy.template_policy=sometimes"])
    with pytest.raises(ConfigError, match=r"unknown key 'curate\.images\.treshold'"):
        load_config(CurateConfig, "curate", path, ["curate.images.treshold=0.5"])
    with pytest.raises(ConfigError, match=r"curate\.images\.batch_size"):
        load_config(CurateConfig, "curate", path, ["curate.images.batch_size=0"])
    cfg = load_config(
        CurateConfig, "curate", path, ["curate.images.use_gpu=false", "curate.minhash.num_perm=256"]
    )
    assert cfg.images.use_gpu is False and cfg.minhash.num_perm == 256
