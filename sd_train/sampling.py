"""Sample-prompt parsing (CLI.md §11) and basic image generation (TRAINING.md §13).

Generation uses the family's own text path and UNet with a diffusers scheduler configured with
the training schedule. Basic: classifier-free guidance, one image per prompt, no ControlNet.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from library.errors import UserError, first_line
from library.models.schedulers import SCHEDULERS, make_scheduler, step_kwargs  # noqa: F401  (re-exported)
from sd_train.ema import sampling_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplePrompt:
    """One sample request with CLI.md §11 defaults."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    sample_steps: int = 30
    scale: float = 7.5
    sample_sampler: str | None = None


_FIELDS = set(SamplePrompt.__dataclass_fields__)
_CODES = {"w": ("width", int), "h": ("height", int), "d": ("seed", int), "s": ("sample_steps", int),
          "l": ("scale", float), "n": ("negative_prompt", str), "ss": ("sample_sampler", str)}


def parse_prompt_line(line: str) -> SamplePrompt:
    """Parse one ``.txt`` line: ``prompt --w 512 --h 512 --d 1 --s 20 --l 7 --n neg --ss euler``."""
    pieces = line.split(" --")
    values: dict = {"prompt": pieces[0].strip()}
    for piece in pieces[1:]:
        code, _, rest = piece.partition(" ")
        spec = _CODES.get(code.lower())
        if spec is None:
            continue
        try:
            values[spec[0]] = spec[1](rest.strip())
        except ValueError:
            continue
    return _normalize(SamplePrompt(**values))


def _normalize(p: SamplePrompt) -> SamplePrompt:
    return replace(p, width=max(64, p.width - p.width % 8), height=max(64, p.height - p.height % 8),
                   sample_steps=min(1000, max(1, p.sample_steps)))


def load_prompts(path: str, warn: bool = False) -> list[SamplePrompt]:
    """Read a ``.txt`` / ``.json`` / ``.toml`` sample-prompt file (CLI.md §11).

    Keys other than :class:`SamplePrompt`'s are ignored, as kohya does (logged when ``warn``).

    Raises:
        UserError: the file is missing, unreadable or malformed (one line naming it).
    """
    if not Path(path).is_file():
        raise UserError(f"{path}: sample prompt file not found; fix --sample_prompts")
    try:
        prompts, ignored = _parse_prompts(path, Path(path).read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON/TOML syntax, missing or unknown keys
        raise UserError(f"{path}: cannot read the sample prompts ({exc.__class__.__name__}: {first_line(exc)}); "
                        "see CLI.md §11 for the .txt/.json/.toml formats") from None
    if warn and ignored:
        logger.warning("%s: ignored unknown prompt keys: %s", path, ", ".join(sorted(ignored)))
    return prompts


def _parse_prompts(path: str, text: str) -> tuple[list[SamplePrompt], set[str]]:
    """``(prompts, unknown keys)`` of a prompt file's text."""
    ignored: set[str] = set()

    def from_dict(d: dict) -> SamplePrompt:
        ignored.update(set(d) - _FIELDS)
        return _normalize(SamplePrompt(**{k: v for k, v in d.items() if k in _FIELDS}))

    if path.endswith(".json"):
        return [parse_prompt_line(i) if isinstance(i, str) else from_dict(i) for i in json.loads(text)], ignored
    if path.endswith(".toml"):
        import tomllib

        doc = tomllib.loads(text).get("prompt")
        if not isinstance(doc, dict):
            raise ValueError("no [prompt] table")
        base = {k: v for k, v in doc.items() if k != "subset"}
        return [from_dict({**base, **sub}) for sub in doc.get("subset", [])], ignored
    lines = [ln.strip() for ln in text.splitlines()]
    return [parse_prompt_line(ln) for ln in lines if ln and not ln.startswith("#")], ignored


def sampler_for(p: SamplePrompt, option: str | None, family) -> str:
    """Sampler name: the prompt's ``--ss``, else ``--sample_sampler``, else the family default
    (``euler_a`` for SDXL, ``ddim`` for SD1/SD2)."""
    return p.sample_sampler or option or family.default_sampler


@torch.no_grad()
def generate(family, models, p: SamplePrompt, sampler: str | None = None, device="cpu"):
    """Render one image for ``p`` with the family's text path; returns a PIL image."""
    from PIL import Image

    from library.models.fp8 import compute_dtype

    sched = make_scheduler(sampler_for(p, sampler, family), family.v_parameterization, p.sample_steps)
    sched.set_timesteps(p.sample_steps, device=device)
    gen = torch.Generator().manual_seed(p.seed if p.seed is not None else int(time.time()))
    extra = step_kwargs(sched, gen)
    conds = family.encode_captions(models.text_encoders, [p.negative_prompt, p.prompt])
    shape = (1, 4, p.height // 8, p.width // 8)
    latents = (torch.randn(shape, generator=gen) * sched.init_noise_sigma).to(device)
    unet = models.unet
    dtype = compute_dtype(unet)  # not next(parameters()).dtype: fp8 under --fp8_base
    size_batch = {"original_sizes_hw": [[p.height, p.width]] * 2, "crop_top_lefts": [[0, 0]] * 2,
                  "target_sizes_hw": [[p.height, p.width]] * 2}
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents] * 2), t)
        tt = torch.full((2,), int(t), dtype=torch.long, device=device)
        pred = family.predict(unet, x.to(dtype), tt, conds.to(device, dtype), size_batch).float()
        uncond, cond = pred.chunk(2)
        latents = sched.step(uncond + p.scale * (cond - uncond), t, latents, **extra).prev_sample
    vae = models.vae
    with torch.autocast(torch.device(device).type, enabled=False):  # the VAE keeps its dtype (--no_half_vae)
        image = vae.decode((latents / family.latent_scale).to(next(vae.parameters()).dtype)).sample
    array = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def sample_during_training(trainer, epoch: int | None, step: int) -> list[Path]:
    """Render every prompt of ``--sample_prompts`` to ``{output_dir}/sample/`` (names: CLI.md §8)."""
    from library.text.conditioning import device_of
    from sd_train.checkpointing import sample_image_name
    from sd_train.tracking import log_samples

    s, sp = trainer.opts.saving, trainer.opts.sampling
    try:
        prompts = load_prompts(sp.sample_prompts)  # re-read each time: kohya lets users edit it mid-run
    except UserError as err:
        logger.warning("%s; no samples this time", err)
        return []
    if getattr(trainer, "pivot", None):  # placeholders become their new tokens, as in the captions
        prompts = [trainer.pivot.rewrite_prompt(p) for p in prompts]
    stamp, written, shown = time.strftime("%Y%m%d%H%M%S"), [], []
    vae, parked = trainer.models.vae, device_of(trainer.models.vae)
    vae.to(trainer.accelerator.device)  # kohya-compat: the VAE waits on the CPU after latent caching
    trainer.network.eval()
    try:
        for index, prompt in enumerate(prompts):
            with trainer.accelerator.autocast():  # kohya-compat: fp16/bf16 base weights beside the fp32 network
                image = generate(trainer.family, trainer.models, prompt, sp.sample_sampler, trainer.accelerator.device)
            path = Path(s.output_dir) / sample_image_name(s.output_name, index=index, timestamp=stamp, epoch=epoch,
                                                          step=step, seed=prompt.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            written.append(path)
            shown.append((index, image, prompt.prompt))
        log_samples(trainer.accelerator, shown, step, epoch)  # W&B only (TRAINING.md §13)
    finally:
        trainer.network.train()
        vae.to(parked)
    return written


def maybe_sample(trainer, epoch: int | None) -> list[Path]:
    """Sample if due: before training (step 0, ``--sample_at_first``), after a step (``epoch=None``)
    or at the end of ``epoch`` (CLI.md §11).

    Global RNG states are saved and restored, so sampling never changes the training trajectory.
    """
    from sd_train.noise import rng_restore, rng_snapshot

    sp, step = trainer.opts.sampling, trainer.progress.global_step
    if not sp.sample_prompts or not trainer.accelerator.is_main_process:
        return []
    if epoch is None and step == 0:
        due = sp.sample_at_first
    elif epoch is None:
        due = not sp.sample_every_n_epochs and sp.sample_every_n_steps and step % sp.sample_every_n_steps == 0
    else:
        due = sp.sample_every_n_epochs and epoch % sp.sample_every_n_epochs == 0
    if not due:
        return []
    snap = rng_snapshot()
    try:
        with sampling_weights(trainer):  # --ema_for_sampling
            return sample_during_training(trainer, epoch=epoch, step=step)
    finally:
        rng_restore(snap)
