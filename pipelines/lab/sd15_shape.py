"""A randomly initialised pipeline with Stable Diffusion 1.5's shape, for cost measurements without weights.

The UNet and VAE are built from SD 1.5's published ``unet/config.json`` and ``vae/config.json`` values
(Rombach et al., CVPR 2022), so every layer has SD 1.5's size and a step costs what it costs on SD 1.5;
the text encoder is a 1-layer ``CLIPTextModel`` with SD 1.5's width (768) and the tokenizer SD v1's
(:func:`~copyguard.pipelines.lab.architecture.build_clip_tokenizer`). Random weights memorize nothing: use
it to time detection, AMG and training steps, never to judge them. ``toy=True`` keeps the block layout at
toy widths (a CPU smoke test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SD15_SCHEDULER",
    "SD15_UNET",
    "SD15_VAE",
    "TOY_WIDTHS",
    "random_index",
    "sd15_shaped_pipeline",
    "sd15_unet",
]

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
TOY_WIDTHS: dict[str, Any] = {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1}


def sd15_unet(toy: bool = False) -> Any:
    """SD 1.5's ``UNet2DConditionModel`` (random weights; created on the current default device)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**SD15_UNET, **(TOY_WIDTHS if toy else {})})


def sd15_shaped_pipeline(
    device: str = "cpu", seed: int = 0, *, toy: bool = False, tokenizer_dir: str | Path | None = None
) -> Any:
    """A ``StableDiffusionAMGPipeline`` of SD 1.5's shape with seeded random weights, on ``device``.

    The weights are created on ``device`` directly (a CPU init of the 860 M-parameter UNet takes seconds);
    the scheduler stays on the CPU, as diffusers keeps it. ``tokenizer_dir``: a saved CLIP tokenizer
    (default: SD v1's, rebuilt from open-clip-torch's BPE file).
    """
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.pipelines.lab.architecture import MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=1, max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
    )  # fmt: skip
    with torch.device(device):
        unet = sd15_unet(toy)
        vae = AutoencoderKL(**{**SD15_VAE, **(TOY_WIDTHS if toy else {})})
        text = CLIPTextModel(text_config)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir)) if tokenizer_dir else build_clip_tokenizer()
    pipe = StableDiffusionAMGPipeline(
        vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def random_index(rows: int, input_size: int) -> Any:
    """Random unit 512-d rows labelled as sscd-onnx descriptors at ``input_size`` px, every row with a
    duplicated caption (so G_dup has a y_N wherever it fires)."""
    import numpy as np

    from copyguard.curation.index import TrainingIndex

    vectors = np.random.default_rng(0).standard_normal((rows, 512)).astype(np.float32)
    entries = [{"key": f"k{i:06d}", "caption": f"training caption {i}", "dup_caption": "a photo of a cat",
                "dup_caption_count": 25, "image_group_size": 25} for i in range(rows)]  # fmt: skip
    return TrainingIndex.build(vectors, entries, {"name": "sscd-onnx", "dim": 512, "input_size": input_size})
