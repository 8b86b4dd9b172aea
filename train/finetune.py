"""``copyguard train``: fine-tune a Stable Diffusion UNet (full or LoRA) with Accelerate and the
memorization filter of Wen et al., ICLR 2024.

The text encoder and the VAE stay frozen. Each micro-batch: VAE latents, a random timestep and noise, the
frozen text embedding, then either the plain UNet prediction or, with the filter on,
:func:`copyguard.train.mem_filter.filtered_prediction` (one UNet call on 2B samples giving the training
prediction and the magnitude, Wen et al., ICLR 2024) and the masked loss. Every random draw of micro-batch ``m``
of step ``s`` on rank ``r`` comes from a generator seeded with ``(seed, s, m, r)`` and the data stream is
seeded too (:mod:`copyguard.train.finetune_data`), so a run resumed from a checkpoint repeats the
uninterrupted one. A non-finite loss stops the run before the weights change (:class:`NonFiniteLoss`);
the checkpoints already written stay.

Outputs in ``RUN_DIR``: the diffusers folder (full) or ``pytorch_lora_weights.safetensors`` (LoRA, loads with
``pipe.load_lora_weights(RUN_DIR)``), ``train_config.yaml`` (resolved), ``train_log.jsonl``, ``training.json``
(summary), ``filtered.jsonl`` (filter on), ``checkpoints/step-NNNNNN``, ``logs/`` (TensorBoard) and
``validation/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.common.runtime import choose_threads, peak_rss_mib, progress_bar
from copyguard.train.checkpoints import (
    EMA_FILE,
    RESUME_KEYS,
    STATE_FILE,
    find_checkpoint,
    flat_config,
    truncate_jsonl,
)
from copyguard.train.config import TrainConfig
from copyguard.train.ema import ExponentialMovingAverage
from copyguard.train.finetune_data import make_loader, shard_paths
from copyguard.train.mem_filter import MagnitudeFilter, filtered_prediction, masked_loss
from copyguard.train.sd_models import encode_text, load_models

__all__ = ["NonFiniteLoss", "run_training"]

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; training stopped before the weights changed."""


def _generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 131 + rank)


def run_training(cfg: TrainConfig, model_dir: str | Path, data: str | list[str], out_dir: str | Path,
                 resume: str | None = None, model_config: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``model_dir`` (a folder, cached Hub id or ``.safetensors`` file configured by ``model_config``:
    :func:`copyguard.train.sd_models.load_models`) on the shards ``data`` into ``out_dir``; returns the
    ``training.json`` body.

    Raises :class:`UsageError` for a bad model folder, data or resume point, :class:`NonFiniteLoss` when the
    loss stops being finite (after writing ``training.json`` with the reason and the last good checkpoint).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    out = Path(out_dir)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        # CPU autocast covers bfloat16: fp16 pixels meet the float32 UNet weights and fail deep in a forward
        raise UsageError("mixed_precision fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    if resume not in (None, "latest"):
        find_checkpoint(out, resume)  # a bad path fails before the models load
    log_with = _trackers(cfg.report_to)
    models = load_models(model_dir, model_config)
    model_dir = models.pop("source_dir")
    paths = shard_paths(data)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        )
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"accelerate: {str(exc).splitlines()[0]}") from None
    if acc.device.type == "cpu":
        torch.set_num_threads(choose_threads(cfg.threads))
    try:
        return _Trainer(cfg, models, paths, out, acc, model_dir).run(resume, set_seed)
    finally:
        torch.set_num_threads(threads)


def _trackers(report_to: str) -> str:
    """accelerate's ``log_with`` for ``train.report_to``; ``wandb`` must be installed (a one-line error)."""
    import importlib.util

    if report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UsageError("train.report_to=wandb needs the wandb package: pip install wandb")
    return report_to


class _Trainer:
    def __init__(self, cfg: TrainConfig, models: dict[str, Any], paths: list[str], out: Path, acc: Any,
                 model_dir: Path) -> None:  # fmt: skip
        self.cfg, self.models, self.paths, self.out, self.acc, self.model_dir = (
            cfg,
            models,
            paths,
            out,
            acc,
            model_dir,
        )
        self.main = acc.is_main_process
        self.filter = MagnitudeFilter(cfg.filter)
        self.skipped: dict[str, int] = {}
        self.step_times: list[float] = []

    def _setup(self, set_seed: Any) -> None:
        from peft import LoraConfig

        cfg, m, acc = self.cfg, self.models, self.acc
        set_seed(cfg.seed)
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        for name in ("vae", "text_encoder"):
            m[name].requires_grad_(False).eval().to(acc.device)
            if self.dtype != torch.float32:
                m[name].to(dtype=self.dtype)
        unet = m["unet"]
        if cfg.mode == "lora":
            unet.requires_grad_(False)
            lora = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, init_lora_weights="gaussian",
                              target_modules=list(cfg.lora.target_modules))  # fmt: skip
            try:
                unet.add_adapter(lora)
            except ValueError as exc:
                raise UsageError(f"train.lora.target_modules: {str(exc).splitlines()[0]}") from None
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self.named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for _, p in self.named)
        self.ema = ExponentialMovingAverage(self.named, cfg.ema_decay) if cfg.ema else None
        opt = torch.optim.AdamW([p for _, p in self.named], lr=cfg.lr, weight_decay=cfg.weight_decay)
        from diffusers.optimization import get_scheduler

        sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                              num_training_steps=cfg.max_steps * acc.num_processes)  # fmt: skip
        self.unet, self.opt, self.sched = acc.prepare(unet, opt, sched)
        vae_cfg = m["vae"].config
        self.scaling = float(vae_cfg.scaling_factor)
        factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
        self.resolution = cfg.data.resolution or int(m["unet"].config.sample_size) * factor
        self.e0 = encode_text(m, [""], acc.device)
        self.noise_sched = m["scheduler"]
        self.filter.num_train_timesteps = int(self.noise_sched.config.num_train_timesteps)

    def _resume(self, resume: str | None) -> int:
        if resume is None:
            return 0
        ckpt = find_checkpoint(self.out, resume)
        if ckpt is None:
            log.warning(
                "--resume %s: no checkpoint in %s; starting from step 0", resume, self.out / "checkpoints"
            )
            return 0
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        saved, now = state["config"], self.cfg.model_dump()
        changed = [k for k in RESUME_KEYS if saved.get(k) != now.get(k)]
        if changed:
            raise UsageError(
                f"checkpoint {ckpt} was written with other train.{changed[0]}; start a new RUN_DIR"
            )
        self.acc.load_state(str(ckpt))
        self.filter.load_state_dict(state["filter"])
        self.skipped = dict(state.get("skipped", {}))
        if self.ema is not None:
            from safetensors.torch import load_file

            self.ema.shadow = load_file(str(ckpt / EMA_FILE))
        log.info("resumed from %s at step %d", ckpt, state["step"])
        return int(state["step"])

    def _save_checkpoint(self, step: int) -> Path:
        from safetensors.torch import save_file

        root = self.out / "checkpoints"
        final, tmp = root / f"step-{step:06d}", root / f"step-{step:06d}.tmp"
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        if self.main:
            state = {"step": step, "config": self.cfg.model_dump(), "filter": self.filter.state_dict(),
                     "skipped": self.skipped}  # fmt: skip
            (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
            if self.ema is not None:
                save_file({k: v.contiguous() for k, v in self.ema.shadow.items()}, str(tmp / EMA_FILE))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(root.glob("step-*[0-9]"))[: -self.cfg.checkpoints_keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def _micro_step(self, batch: Any, step: int, micro: int) -> tuple[torch.Tensor, dict[str, Any]]:
        acc, m = self.acc, self.models
        g = _generator(self.cfg.seed, step, micro, acc.process_index)
        pixels = batch.pixels.to(acc.device, dtype=self.dtype)
        with torch.no_grad():
            post = m["vae"].encode(pixels).latent_dist
            eps_z = torch.randn(post.mean.shape, generator=g).to(acc.device, dtype=post.mean.dtype)
            latents = (post.mean + post.std * eps_z).float() * self.scaling
        noise = torch.randn(latents.shape, generator=g).to(acc.device)
        b = latents.shape[0]
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (b,), generator=g).to(acc.device)
        noisy = self.noise_sched.add_noise(latents, noise, t)
        cond = encode_text(m, batch.captions, acc.device)
        if self.noise_sched.config.prediction_type == "v_prediction":
            target = self.noise_sched.get_velocity(latents, noise, t)
        else:
            target = noise
        with acc.autocast():
            if self.filter.enabled:
                pred, mag = filtered_prediction(
                    self.unet, noisy, t, cond, self.e0, batched=self.cfg.filter.use_batched(acc.device.type)
                )
            else:
                pred, mag = self.unet(noisy, t, encoder_hidden_states=cond).sample, None
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        keep = self.filter.keep(mag, t) if mag is not None else torch.ones(b, device=acc.device)
        # Normalize by the kept count of the whole global micro-batch, not this rank's: DDP averages the ranks'
        # gradients, so rank r's loss is sum_r(l_i * keep_i) * P / sum_all(keep): equal to the one-process
        # masked mean over the same global batch whatever each rank drops (1 process: masked_loss itself).
        if acc.num_processes > 1:
            kept_all = acc.gather(keep.detach().float().sum().reshape(1)).sum().clamp(min=1.0)
            loss = (per_sample * keep.to(per_sample.dtype)).sum() * acc.num_processes / kept_all
        else:
            loss = masked_loss(per_sample, keep)
        if (
            self.cfg.debug_nan_at_step == step + 1
        ):  # documented test hook (copyguard.train.config.TrainConfig)
            loss = loss * float("nan")
        info = {"keep": keep, "mag": mag, "t": t, "keys": batch.keys}
        return loss, info

    def _record_filter(self, step: int, info: dict[str, Any]) -> int:
        from accelerate.utils import gather_object

        if info["mag"] is None:
            return 0
        acc = self.acc
        mags, keep, ts = (
            acc.gather(x.float()).cpu().tolist() for x in (info["mag"], info["keep"], info["t"])
        )
        keys = gather_object(list(info["keys"])) if acc.num_processes > 1 else info["keys"]
        rows = self.filter.record(step + 1, keys, ts, mags, keep)  # 1-based, as in train_log.jsonl
        return len(rows)

    def run(self, resume: str | None, set_seed: Any) -> dict[str, Any]:
        cfg, acc, out = self.cfg, self.acc, self.out
        t_start = time.perf_counter()
        self._setup(set_seed)
        rss_loaded = peak_rss_mib()
        step = self._resume(resume)
        log_path = out / "train_log.jsonl"
        if self.main:
            if self.filter.enabled:
                self.filter.open_log(out / "filtered.jsonl", step)
            truncate_jsonl(log_path, step)
            atomic_write(
                str(out / "train_config.yaml"), yaml.safe_dump({"train": cfg.model_dump()}, sort_keys=False)
            )
        acc.init_trackers("copyguard-train", config=flat_config(cfg))
        loader = make_loader(
            self.paths, cfg.data, self.resolution, cfg.batch_size, cfg.seed, acc.num_processes
        )
        it = iter(loader)
        for _ in progress_bar(
            range(step * cfg.grad_accum), desc="skip consumed batches", leave=False, enabled=bool(step)
        ):
            next(it)
        last_ckpt = find_checkpoint(out, "latest") if step else None
        loss_avg, status = float("nan"), "complete"
        bar = progress_bar(
            range(step, cfg.max_steps), desc="train", initial=step, total=cfg.max_steps, enabled=self.main
        )
        try:
            for step in bar:
                t0 = time.perf_counter()
                losses, n_filtered = [], 0
                for micro in range(cfg.grad_accum):
                    try:
                        batch = next(it)
                    except StopIteration:
                        raise UsageError(f"the shards {self.paths[0]}... hold no usable sample") from None
                    for k, v in batch.skipped.items():
                        self.skipped[k] = self.skipped.get(k, 0) + v
                    with acc.accumulate(self.unet):
                        loss, info = self._micro_step(batch, step, micro)
                        finite = acc.gather(torch.isfinite(loss.detach()).float()[None]).min().item()
                        if finite < 1:
                            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {step + 1}")
                        n_filtered += self._record_filter(step, info)
                        acc.backward(loss)
                        if acc.sync_gradients:
                            acc.clip_grad_norm_(self.unet.parameters(), cfg.max_grad_norm)
                        self.opt.step()
                        self.sched.step()
                        self.opt.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                self.filter.end_step(step)
                if self.ema is not None:
                    self.ema.update(self.named, step)
                self.step_times.append(time.perf_counter() - t0)
                loss_step = float(np.mean(losses))
                loss_avg = loss_step if np.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * loss_step
                bar.set_postfix(loss=f"{loss_avg:.4f}")
                row = {"step": step + 1, "loss": loss_step, "lr": self.sched.get_last_lr()[0], "filtered": n_filtered,
                       "step_s": round(self.step_times[-1], 4)}  # fmt: skip
                if self.main:
                    with log_path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                if (step + 1) % cfg.log_every == 0:
                    acc.log({"train/loss": loss_avg, "train/lr": row["lr"], "filter/filtered_total": self.filter.filtered},
                            step=step + 1)  # fmt: skip
                if (step + 1) % cfg.checkpoint_every == 0:
                    last_ckpt = self._save_checkpoint(step + 1)
                if cfg.validation.every and cfg.validation.prompts and (step + 1) % cfg.validation.every == 0:
                    self._validate(step + 1)
            step = cfg.max_steps
        except NonFiniteLoss as exc:
            status = f"stopped: {exc}"
            log.error("%s; stopped. Last good checkpoint: %s", exc, last_ckpt or "none")
        if status == "complete":
            self._save_output()
        summary = self._summary(step, status, loss_avg, last_ckpt, rss_loaded, time.perf_counter() - t_start)
        if self.main:
            atomic_write(str(out / "training.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
        fs = summary["filter"]
        acc.log({"filter/samples_filtered": fs["samples_filtered"], "filter/unique_keys": fs["unique_keys_filtered"]},
                step=step)  # fmt: skip
        acc.end_training()
        if status != "complete":
            raise NonFiniteLoss(
                f"{status[9:]}; kept the last good checkpoint: {last_ckpt or 'none written yet'}"
            )
        return summary

    def _summary(self, step: int, status: str, loss: float, ckpt: Path | None, rss_loaded: float,
                 total_s: float) -> dict[str, Any]:  # fmt: skip
        times = self.step_times[2:] if len(self.step_times) > 4 else self.step_times
        cuda = self.acc.device.type == "cuda"
        return {
            "status": status,
            "steps": step,
            "model": str(self.model_dir),
            "shards": len(self.paths),
            "mode": self.cfg.mode,
            "resolution": self.resolution,
            "trainable_params": self.trainable,
            "final_loss_ema": loss,
            "last_checkpoint": str(ckpt) if ckpt else None,
            "filter": self.filter.summary(),
            "skipped_samples": self.skipped,
            "step_s_mean": float(np.mean(times)) if times else None,
            "step_s_median": float(np.median(times)) if times else None,
            "total_s": total_s,
            "rss_after_load_mib": rss_loaded,
            "rss_peak_mib": peak_rss_mib(),
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "processes": self.acc.num_processes,
            "device": str(self.acc.device),
            "torch_threads": torch.get_num_threads(),
        }

    def _pipeline(self) -> Any:
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        m = self.models
        return StableDiffusionPipeline(
            vae=m["vae"], text_encoder=m["text_encoder"], tokenizer=m["tokenizer"], unet=self.acc.unwrap_model(self.unet),
            scheduler=DDIMScheduler.from_config(m["scheduler"].config), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip

    @torch.no_grad()
    def _validate(self, step: int) -> None:
        spec = self.cfg.validation
        self.unet.eval()
        pipe = self._pipeline()
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(spec.seed + i) for i in range(len(spec.prompts))]
        imgs = pipe(list(spec.prompts), height=self.resolution, width=self.resolution, generator=gens,
                    num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale, output_type="np").images  # fmt: skip
        self.unet.train()
        if self.main:
            from PIL import Image

            folder = self.out / "validation" / f"step-{step:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            arr = np.clip(np.round(imgs * 255), 0, 255).astype(np.uint8)
            for i, im in enumerate(arr):
                Image.fromarray(im).save(folder / f"{i:02d}.png")
            for tracker in self.acc.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_images("validation", arr, step, dataformats="NHWC")

    def _save_output(self) -> None:
        self.acc.wait_for_everyone()
        if not self.main:
            return
        unet = self.acc.unwrap_model(self.unet)
        if self.ema is not None:
            self.ema.copy_to([(n, p) for n, p in unet.named_parameters() if p.requires_grad])
        if self.cfg.mode == "lora":
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            StableDiffusionPipeline.save_lora_weights(
                str(self.out), unet_lora_layers=layers, safe_serialization=True
            )
        else:
            self._pipeline().save_pretrained(str(self.out), safe_serialization=True)
            # keep the source model's sampler (the trainer loaded its config as a DDPM noise schedule)
            shutil.copytree(self.model_dir / "scheduler", self.out / "scheduler", dirs_exist_ok=True)
            src = json.loads((self.model_dir / "model_index.json").read_text())
            index = json.loads((self.out / "model_index.json").read_text())
            index["scheduler"] = src.get("scheduler", index["scheduler"])
            (self.out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        log.info("saved %s weights to %s", self.cfg.mode, self.out)
