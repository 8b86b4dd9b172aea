"""Joint keep/drop policy, its reasons and summary; the curate config schema and its YAML defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from copyguard.common.config import load_config
from copyguard.common.errors import ConfigError
from copyguard.curation.config import CurateConfig, PolicyConfig
from copyguard.curation.policy import CAPTION_RULES, decide, size_histogram, summarize

ROOT = Path(__file__).resolve().parent.parent


def _by_key(decisions):
    return {d.key: d for d in decisions}


def test_representative_highest_resolution_then_smallest_key() -> None:
    keys = ["d", "c", "b", "a", "e"]
    widths = [100, 200, 100, 200, 50]
    heights = [100, 100, 200, 100, 50]
    image_group = ["a", "a", "a", "a", "e"]
    caption_group = ["d", "c", "b", "a", "e"]
    out = _by_key(decide(keys, widths, heights, image_group, caption_group, captions=keys))
    # c, b and a all have 20000 px: the smallest key, a, wins; d (10000 px) is dropped too.
    assert out["a"].status == "kept" and out["a"].reason == "" and out["a"].representative == "a"
    for k in "bcd":
        assert (out[k].status, out[k].reason, out[k].representative) == ("duplicate", "image_duplicate", "a")
    assert out["e"].status == "kept"
    assert [d.key for d in decide(keys, widths, heights, image_group, caption_group, captions=keys)] == keys


def test_duplicated_caption_over_duplicated_images() -> None:
    keys = ["k1", "k2", "k3", "k4"]
    dims = {k: 64 for k in keys}
    image_group = {"k1": "k1", "k2": "k1", "k3": "k1", "k4": "k4"}
    caption_group = {"k1": "k1", "k2": "k1", "k3": "k3", "k4": "k1"}
    captions = {
        "k1": "A red vintage car parked in front of a bakery",
        "k2": "a red vintage car parked in front of the bakery.",
        "k3": "Portrait of an old fisherman",
        "k4": "A red vintage car parked in front of a bakery",
    }
    out = _by_key(decide(keys, dims, dims, image_group, caption_group, captions=captions))
    assert out["k1"].status == "kept"
    assert out["k2"].reason == "image_and_caption_duplicate" and out["k2"].representative == "k1"
    assert out["k3"].reason == "image_duplicate"
    assert out["k4"].status == "kept"  # same caption, different image: not a duplicate by itself
    assert out["k2"].caption_rule == "exact_caption"  # the same canonical caption as k1
    assert out["k3"].caption_rule == "" and "caption_rule" not in out["k2"].row()


def test_near_duplicate_caption_rule_is_told_from_exact() -> None:
    keys = ["a", "b", "c"]
    captions = [
        "A cup of coffee on a saucer next to a spoon on a table",
        "A cup of coffee on a saucer next to a silver spoon on a table",
        "A cup of coffee on a saucer next to a spoon on a table!",
    ]
    out = decide(keys, [9, 8, 7], [9, 8, 7], ["a", "a", "a"], ["a", "a", "a"], captions=captions)
    assert [(d.status, d.caption_rule) for d in out] == [
        ("kept", ""),
        ("duplicate", "near_duplicate_caption"),
        ("duplicate", "exact_caption"),
    ]
    assert summarize(out)["caption_rule_drops"] == {
        "exact_caption": 1,
        "near_duplicate_caption": 1,
        "template": 0,
    }


TEMPLATE = "Shaw Floors Caress Quiet Comfort Deep Indigo 00424_CCB96"


def _templated(n_images: int = 6, caption: str = TEMPLATE):
    """Caption group 't' over n distinct images; image t0 also has a second copy 'x' with its own caption."""
    keys = [f"t{k}" for k in range(n_images)] + ["x"]
    image_group = [f"t{k}" for k in range(n_images)] + ["t0"]
    caption_group = ["t"] * n_images + ["x"]
    widths = [10] * n_images + [5]
    captions = [caption] * n_images + ["A red vintage car parked in front of a bakery"]
    return (keys, widths, widths, image_group, caption_group), {"captions": captions}


def test_templated_caption_keep_cap_drop() -> None:
    args, kw = _templated()
    keep = _by_key(decide(*args, PolicyConfig(template_policy="keep", template_min_images=5), **kw))
    assert [keep[f"t{k}"].status for k in range(6)] == ["kept"] * 6
    assert keep["x"].reason == "image_duplicate" and keep["x"].representative == "t0"

    cap = _by_key(
        decide(*args, PolicyConfig(template_policy="cap", template_cap=2, template_min_images=5), **kw)
    )
    assert [cap[f"t{k}"].status for k in range(6)] == ["kept", "kept"] + ["duplicate"] * 4
    assert {cap[f"t{k}"].reason for k in range(2, 6)} == {"templated_caption_cap"}
    assert cap["t3"].representative == ""
    assert cap["x"].reason == "image_duplicate"
    assert {cap[f"t{k}"].caption_rule for k in range(2, 6)} == {"template"}

    drop = _by_key(decide(*args, PolicyConfig(template_policy="drop", template_min_images=5), **kw))
    assert {drop[f"t{k}"].reason for k in range(1, 6)} == {"templated_caption_drop"}
    # t0's image survives through its other copy x, whose caption is not templated: t0 is that image's
    # duplicate (the image reason comes first: the caption alone did not cost the image).
    assert drop["x"].status == "kept"
    assert (drop["t0"].reason, drop["t0"].representative) == ("image_duplicate", "x")

    # Below template_min_images distinct images nothing is templated.
    few = _by_key(decide(*args, PolicyConfig(template_policy="drop", template_min_images=7), **kw))
    assert all(d.status == "kept" for k, d in few.items() if k != "x")


@pytest.mark.parametrize(
    "caption", ["a photo", "A photo.", "image", "Untitled", "IMG_0042.jpg", "a photo of a dog", "a red car"]
)
def test_generic_caption_over_distinct_images_is_no_template(caption: str) -> None:
    """Five or six distinct images sharing a short generic caption are distinct image-text pairs: all kept."""
    for n_images in (5, 6):
        args, kw = _templated(n_images, caption)
        out = decide(*args, PolicyConfig(template_policy="drop", template_min_images=5), **kw)
        assert [d.status for d in out[:n_images]] == ["kept"] * n_images
        assert summarize(out)["caption_rule_drops"]["template"] == 0


def test_template_needs_every_caption_of_the_group_informative() -> None:
    args, kw = _templated()
    kw["captions"][3] = "photo"  # one generic member in the group: no evidence of a template
    out = decide(*args, PolicyConfig(template_policy="drop", template_min_images=5), **kw)
    assert all(d.status == "kept" for d in out[:6])


def test_template_min_words_threshold() -> None:
    args, kw = _templated(caption="A red sports car outside")  # 4 content words
    cfg = PolicyConfig(template_policy="drop", template_min_images=5)
    assert sum(d.status == "duplicate" for d in decide(*args, cfg, **kw)) == 6  # t1..t5 and x
    kept = decide(*args, cfg, template_min_words=5, **kw)
    assert all(d.status == "kept" for d in kept[:6])

    class WithMinWords:  # a schema that gains the key is read without other changes
        template_policy = "drop"
        template_min_images = 5
        template_cap = 3
        template_min_words = 5

    assert all(d.status == "kept" for d in decide(*args, WithMinWords(), **kw)[:6])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="widths has 1 values for 2 keys"):
        decide(["a", "b"], [1], [1, 1], ["a", "b"], ["a", "b"], captions=["a", "b"])
    with pytest.raises(ValueError, match="no value for key 'b'"):
        decide(["a", "b"], {"a": 1}, [1, 1], ["a", "b"], ["a", "b"], captions=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        decide(["a", "a"], [1, 1], [1, 1], ["a", "a"], ["a", "a"], captions=["a", "a"])
    with pytest.raises(ValueError, match="captions has 1 values for 2 keys"):
        decide(["a", "b"], [1, 1], [1, 1], ["a", "b"], ["a", "b"], captions=["a"])


def test_summary_counts_and_histograms() -> None:
    args, kw = _templated()
    decisions = decide(
        *args, PolicyConfig(template_policy="cap", template_cap=2, template_min_images=5), **kw
    )
    s = summarize(decisions, top_groups=1)
    assert s["samples"] == 7 and s["status"] == {"duplicate": 5, "kept": 2}
    assert s["reason"] == {"image_duplicate": 1, "templated_caption_cap": 4}
    assert s["caption_rule_drops"] == dict.fromkeys(CAPTION_RULES, 0) | {"template": 4}
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


def test_template_cap_ranks_the_reference_groups_first() -> None:
    """An incremental run: the earlier run's kept samples (preferred) hold the cap's slots before new ones,
    whatever their keys, so a cap of 2 keeps 2 over both runs (not 2 new ones besides the old)."""
    args, kw = _templated()
    cfg = PolicyConfig(template_policy="cap", template_cap=2, template_min_images=5)
    out = _by_key(decide(*args, cfg, preferred={"t4", "t5"}, **kw))
    assert [out[f"t{k}"].status for k in range(6)] == ["duplicate"] * 4 + ["kept", "kept"]
    assert {out[f"t{k}"].reason for k in range(1, 4)} == {"templated_caption_cap"}
    assert (out["t0"].reason, out["t0"].representative) == ("image_duplicate", "x")  # x: its own caption
    # Without the reference, the smallest keys win the slots.
    plain = _by_key(decide(*args, cfg, **kw))
    assert [plain[f"t{k}"].status for k in range(1, 6)] == ["kept"] + ["duplicate"] * 4


def test_excluded_keys_drop_their_image_groups() -> None:
    keys = ["a", "b", "c", "d"]
    groups = {"a": "a", "b": "a", "c": "c", "d": "d"}
    out = _by_key(decide(keys, [8] * 4, [8] * 4, groups, keys, captions=keys, excluded={"b", "d", "zz"}))
    assert (out["b"].status, out["b"].reason, out["b"].representative) == ("duplicate", "excluded_key", "")
    assert (out["a"].status, out["a"].reason) == ("duplicate", "excluded_group")
    assert out["d"].reason == "excluded_key" and out["c"].status == "kept"
    assert all(d.caption_rule == "" for d in out.values())
