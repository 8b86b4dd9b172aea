"""Building blocks of the lab model: a real CLIP tokenizer and from-scratch SD components.

Every component is the class Stable Diffusion v1 uses (``CLIPTokenizer``, ``CLIPTextModel``,
``AutoencoderKL``, ``UNet2DConditionModel``, an epsilon-prediction scheduler), only smaller, so the folder
written by :func:`save_pipeline` loads with ``StableDiffusionPipeline.from_pretrained``.

The tokenizer is rebuilt from the CLIP BPE merges shipped in the ``open-clip-torch`` package (located
through its import spec, never imported): 256 byte symbols, their ``</w>`` forms, 48,894 merges and the two
special tokens, 49,408 ids in CLIP's order, so token ids equal SD v1's.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from copyguard.common.assets import locate
from copyguard.common.errors import UsageError
from copyguard.pipelines.lab.config import LabPresetConfig

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "VOCAB_SIZE",
    "build_clip_tokenizer",
    "build_scheduler",
    "build_text_encoder",
    "build_unet",
    "build_vae",
    "bytes_to_unicode",
    "clip_bpe_path",
    "clip_vocab_and_merges",
    "count_params",
    "save_pipeline",
]

log = logging.getLogger(__name__)

VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407
MAX_LENGTH = 77
_N_MERGES = VOCAB_SIZE - 256 * 2 - 2  # 48,894: CLIP keeps merges[1 : 49152 - 256 - 2 + 1]
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe_path() -> Path:
    """Path of CLIP's BPE merges file inside the installed ``open-clip-torch`` (not imported)."""
    return locate("clip-bpe", _BPE_FILE)


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table of byte-level BPE (GPT-2/CLIP), in CLIP's vocabulary order.

    Printable Latin-1 bytes map to themselves; the 68 others are shifted to code points 256 and up, so
    every byte has a visible, whitespace-free symbol.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (token -> id) and merge rules (pairs), exactly as CLIP orders them."""
    with gzip.open(bpe_path or clip_bpe_path()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1 : 1 + _N_MERGES]]  # line 0: "#version" header
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise UsageError(f"CLIP BPE file has {len(merges)} merges, expected {_N_MERGES}")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise UsageError(f"rebuilt CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def build_clip_tokenizer(bpe_path: Path | None = None) -> CLIPTokenizer:
    """SD v1's tokenizer: CLIP BPE, 77 tokens, padded with ``<|endoftext|>``."""
    vocab, merges = clip_vocab_and_merges(bpe_path)
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=MAX_LENGTH,
    )
    assert tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID
    return tok


def build_text_encoder(preset: LabPresetConfig) -> CLIPTextModel:
    """A small ``CLIPTextModel`` with CLIP's vocabulary and 77 positions."""
    spec = preset.text_encoder
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=spec.hidden_size,
        pad_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return CLIPTextModel(config)


def build_vae(preset: LabPresetConfig) -> AutoencoderKL:
    """``AutoencoderKL`` with ``len(block_out_channels) - 1`` halvings (f = 2 for two blocks, SD's f = 8 for four)."""
    spec = preset.vae
    n = len(spec.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(spec.block_out_channels),
        layers_per_block=spec.layers_per_block,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.norm_num_groups,
        sample_size=preset.resolution,
        mid_block_add_attention=spec.mid_block_attention,
    )


def latent_size(preset: LabPresetConfig) -> int:
    """Side of the latent grid: the resolution divided by the VAE's downsampling factor."""
    return preset.resolution // preset.vae.factor


def build_unet(preset: LabPresetConfig) -> UNet2DConditionModel:
    """``UNet2DConditionModel`` cross-attending to the text encoder's hidden states."""
    spec = preset.unet
    return UNet2DConditionModel(
        sample_size=latent_size(preset),
        in_channels=preset.vae.latent_channels,
        out_channels=preset.vae.latent_channels,
        block_out_channels=tuple(spec.block_out_channels),
        down_block_types=tuple(spec.down_block_types),
        up_block_types=tuple(spec.up_block_types),
        layers_per_block=spec.layers_per_block,
        cross_attention_dim=preset.text_encoder.hidden_size,
        attention_head_dim=spec.attention_head_dim,
        norm_num_groups=spec.norm_num_groups,
    )


def build_scheduler(preset: LabPresetConfig) -> DDIMScheduler:
    """The shipped scheduler: epsilon prediction, SD v1's step conventions, the preset's betas.

    DDIM is what the pipeline samples with by default; ``DDPMScheduler.from_config`` reads the same
    config for training (``add_noise``).
    """
    spec = preset.scheduler
    return DDIMScheduler(
        num_train_timesteps=spec.num_train_timesteps,
        beta_start=spec.beta_start,
        beta_end=spec.beta_end,
        beta_schedule=spec.beta_schedule,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing=spec.timestep_spacing,
    )


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_pipeline(
    out_dir: Path,
    *,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
) -> None:
    """Write a diffusers ``StableDiffusionPipeline`` folder with no safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    _check_model_index(out_dir / "model_index.json")
    _write_bpe_files(out_dir / "tokenizer")


def _write_bpe_files(folder: Path) -> None:
    """``vocab.json`` + ``merges.txt`` as SD ships them, for tools that read the BPE files directly."""
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _check_model_index(path: Path) -> None:
    """Make sure the index says "no safety checker" so ``from_pretrained`` needs no extra arguments."""
    index: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for name in ("safety_checker", "feature_extractor", "image_encoder"):
        if index.get(name) not in (None, [None, None]):
            index[name] = [None, None]
            changed = True
    if index.get("requires_safety_checker") is not False:
        index["requires_safety_checker"] = False
        changed = True
    if changed:
        path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
