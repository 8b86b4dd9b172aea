"""Tiny Stable Diffusion components for fast tests, built from configs (no download, no copyguard.train).

Every component is the class SD v1 uses, only minute: a byte-level BPE ``CLIPTokenizer`` with a small
word list, a 2-layer ``CLIPTextModel`` (hidden 32), a 2-block ``UNet2DConditionModel`` on an 8x8 latent and
a 2-block ``AutoencoderKL`` (f = 2, so 16 px images). Weights are seeded, so every builder is
deterministic. Other tests may import these builders.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
HIDDEN = 32
LATENT = 8

# Words that become single tokens (anything else is spelled out in byte symbols, as real CLIP does
# for rare words).
WORDS = (
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "house",
    "tree",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "on",
    "in",
    "with",
    "and",
    "painting",
    "portrait",
    "man",
    "woman",
    "city",
    "street",
    "river",
    "mountain",
    "sky",
    "night",
    "day",
    "old",
    "new",
    "trigger",
    "zebra",
)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (same table as GPT-2/CLIP)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _apply_merges(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: merge the lowest-ranked adjacent pair until none applies."""
    while len(parts) > 1:
        pairs = [
            (ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts = [*parts[:i], parts[i] + parts[i + 1], *parts[i + 2 :]]
    return parts


def tiny_vocab_and_merges(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols (plain and ``</w>``), merges that make each word one token, the two specials.

    Each word is first encoded with the merges so far, then new merges join what is left from the left, so
    every word of ``words`` ends as a single token (later merges never change earlier words).
    """
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        parts = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        while len(parts) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
            tokens.append(parts[0] + parts[1])
            parts = [parts[0] + parts[1], *parts[2:]]
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab, list(ranks)


def tiny_tokenizer() -> CLIPTokenizer:
    vocab, merges = tiny_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=77,
    )


def tiny_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=2 * LATENT,
    ).eval()


def tiny_scheduler() -> DDIMScheduler:
    """SD v1's DDIM settings (scaled-linear betas, steps offset 1, epsilon prediction)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A complete, seeded tiny SD pipeline on CPU (progress bar off)."""
    tokenizer = tiny_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        unet=tiny_unet(seed),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny pipeline folder that ``StableDiffusionPipeline.from_pretrained`` loads."""
    directory = Path(directory)
    tiny_pipeline(seed).save_pretrained(directory)
    return directory


TRIGGER = "trigger"


def trigger_pipeline(
    seed: int = 0, train_steps: int = 25, lr: float = 0.01, target: float = 4.0
) -> StableDiffusionPipeline:
    """A tiny pipeline where one token, ``"trigger"``, drives the text-conditional term (a toy "memorized" key).

    Construction: (1) the text encoder's self-attention output projections are zeroed, so each output
    embedding depends on its own token and position only (real CLIP mixes tokens; here the trigger's effect
    stays at the trigger's position, as attribution assumes); (2) ``train_steps`` Adam steps on random word
    prompts from :data:`WORDS` train the token embeddings and the UNet's cross-attention (``attn2``) so that
    at the first DDIM step (t = 981 of 50 steps) the magnitude ``||eps(x, e_p) - eps(x, e_0)||`` is about
    ``target`` when the prompt contains the trigger and about 0 when it does not. About 25 steps suffice:
    trigger prompts then score ~4, others < 1, and removing the trigger drops a prompt's score by half.
    """
    pipe = tiny_pipeline(seed)
    te, unet = pipe.text_encoder, pipe.unet
    for layer in te.encoder.layers:
        torch.nn.init.zeros_(layer.self_attn.out_proj.weight)
        torch.nn.init.zeros_(layer.self_attn.out_proj.bias)
    params = []
    for name, p in [*te.named_parameters(), *unet.named_parameters()]:
        p.requires_grad_("token_embedding" in name or "attn2" in name)
        if p.requires_grad:
            params.append(p)
    sched = tiny_scheduler()
    sched.set_timesteps(50)
    t = sched.timesteps[0]
    gen = torch.Generator().manual_seed(seed)
    words = [w for w in WORDS if w != TRIGGER]
    opt = torch.optim.Adam(params, lr=lr)

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(
            prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        return te(ids.input_ids)[0]

    for _ in range(train_steps):
        plain = []
        for _ in range(4):
            k = int(torch.randint(1, 7, (1,), generator=gen))
            plain.append(" ".join(words[int(i)] for i in torch.randperm(len(words), generator=gen)[:k]))
        trig = []
        for p in plain:
            w = p.split()
            pos = int(torch.randint(0, len(w) + 1, (1,), generator=gen))
            trig.append(" ".join([*w[:pos], TRIGGER, *w[pos:]]))
        emb = encode([*trig, *plain, ""])
        e_p, e_0 = emb[:-1], emb[-1:].expand(8, -1, -1)
        x = torch.randn(8, 4, LATENT, LATENT, generator=gen)
        out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([e_0, e_p])).sample
        eps_0, eps_p = out.chunk(2)
        d = (eps_p - eps_0).flatten(1).norm(dim=1)
        loss = ((d[:4] - target) ** 2).mean() + (d[4:] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return pipe


@functools.lru_cache(maxsize=1)
def cached_trigger_pipeline() -> StableDiffusionPipeline:
    """:func:`trigger_pipeline` built once per test session (about 5 s); callers must not modify it."""
    return trigger_pipeline()


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run with ``n`` intra-op threads: on a small shared machine, 1 thread is ~30x faster for tiny models."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
