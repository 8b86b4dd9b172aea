"""Prompt files (.txt / .jsonl / .csv) and prompt encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.prompts import PromptRecord, encode_prompts, read_prompt_file, tokenize_prompts
from tests.tiny_sd import tiny_pipeline, torch_threads

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_txt(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.txt", "\ufeffa red house\n\n  the cat  \r\nblue sky\n")
    assert read_prompt_file(path) == [
        PromptRecord("a red house"),
        PromptRecord("the cat"),
        PromptRecord("blue sky"),
    ]


def test_jsonl(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "a red house", "label": 1, "group": "g1"}',
        "",
        '{"caption": "the cat", "memorized": false, "group": 7}',
        '{"prompt": "blue sky", "label": "true"}',
        '{"caption": "x", "prompt": "prompt wins"}',
    ]
    assert read_prompt_file(_write(tmp_path, "p.jsonl", "\n".join(lines))) == [
        PromptRecord("a red house", 1, "g1"),
        PromptRecord("the cat", 0, "7"),
        PromptRecord("blue sky", 1, None),
        PromptRecord("prompt wins"),
    ]


def test_csv_semicolon_and_comma(tmp_path: Path) -> None:
    semi = ';Caption;URL;label\n0;"a red; house";http://x;1\n1;the cat;;\n'
    assert read_prompt_file(_write(tmp_path, "a.csv", semi)) == [
        PromptRecord("a red; house", 1),
        PromptRecord("the cat"),
    ]
    comma = 'prompt,group,memorized\n"a red, house",g,no\nthe cat,,yes\n'
    assert read_prompt_file(_write(tmp_path, "b.csv", comma)) == [
        PromptRecord("a red, house", 0, "g"),
        PromptRecord("the cat", 1),
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("e.txt", "", "is empty"),
        ("e.txt", "\n  \n", "is empty"),
        ("e.jsonl", "", "is empty"),
        ("e.csv", "", "is empty"),
        ("e.csv", ";Caption;URL\n", "has no prompts"),
        ("e.csv", ";Caption;URL\n;;\n", "has no prompts"),
        ("c.csv", ";Text;URL\n0;a;b\n", "no 'Caption' or 'prompt' column"),
        ("c.csv", "a,Caption\n1\n", r"c.csv:2: 1 fields"),
        ("c.csv", "Caption;label\nx;maybe\n", r"c.csv:2: label must be 0/1"),
        ("c.csv", "Caption;URL\n\n  ;http://x\n", r"c.csv:3: empty prompt"),
        ("b.jsonl", '{"prompt": "ok"}\n{"prompt": "bad"\n', r"b.jsonl:2: not valid JSON"),
        ("b.jsonl", '["a"]\n', r"b.jsonl:1: expected a JSON object"),
        ("b.jsonl", '{"text": "a"}\n', r"b.jsonl:1: no 'prompt' or 'caption' field"),
        ("b.jsonl", '{"prompt": 3}\n', r"b.jsonl:1: prompt must be a string"),
        ("b.jsonl", '{"prompt": "a", "label": 2}\n', r"b.jsonl:1: label must be 0/1"),
        ("b.jsonl", '{"prompt": "a", "group": [1]}\n', r"b.jsonl:1: group must be"),
        ("p.tsv", "a\n", "unknown extension '.tsv'"),
    ],
)
def test_malformed_files_give_one_line_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        read_prompt_file(_write(tmp_path, name, text))
    assert "\n" not in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        read_prompt_file(tmp_path / "nope.txt")
    path = tmp_path / "bin.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="not UTF-8"):
        read_prompt_file(path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared prompt sets not present")
def test_real_shared_prompt_sets() -> None:
    memorized = read_prompt_file(SHARED / "memorized_laion_prompts.csv")
    assert len(memorized) == 500
    assert memorized[0] == PromptRecord("The No Limits Business Woman Podcast")
    unmemorized = read_prompt_file(SHARED / "unmemorized_laion_prompts.csv")
    assert len(unmemorized) == 500 and all(r.prompt for r in unmemorized)
    coco = read_prompt_file(SHARED / "coco2014_val_10000.csv")
    assert len(coco) == 10_000 and coco[0].prompt == "a person standing close to an elephant"


def test_encode_prompts_equals_the_pipeline_encoding() -> None:
    pipe = tiny_pipeline()
    prompts = ["a red house", "the cat on a tree"]
    with torch_threads(1), torch.no_grad():
        ours = encode_prompts(pipe, [*prompts, ""])
        pos, neg = pipe.encode_prompt(prompts, torch.device("cpu"), 1, True, negative_prompt=None)
        pair = encode_prompts((pipe.tokenizer, pipe.text_encoder), prompts, "cpu")
    assert ours.shape == (3, 77, 32)
    # Exact for the prompts; the empty prompt within float rounding (CPU kernels may block a batch of 3
    # and a batch of 2 differently).
    assert torch.equal(ours[:2], pos)
    torch.testing.assert_close(ours[2:].expand(2, -1, -1), neg, rtol=0, atol=1e-5)
    assert torch.equal(pair, pos)
    ids = tokenize_prompts(pipe.tokenizer, prompts)
    assert ids.shape == (2, 77) and int(ids[0, 0]) == pipe.tokenizer.bos_token_id
