"""Build the toy base checkpoints: one VAE for every family, then a UNet + text encoder(s) per family, each
trained from scratch on the world without the held-out colour, written as real single-file checkpoints."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from library.models.families import FamilySpec
from library.toyworld import base_fit, vae_fit, world

VARIANTS_PER_KIND = 48  # jittered pictures per (shape, colour, background): 18 kinds -> 864 latents
NORM_GROUPS = 8  # GroupNorm groups of the toy UNets (see toy_unet_config)


def toy_unet_config(config):
    """A tiny UNet config (SD dict or ``SdxlUNetConfig``) with :data:`NORM_GROUPS` GroupNorm groups: same keys
    and shapes. The tiny SDXL default (32 groups over 32 channels) normalises single channels over 8×8
    latents; trained from scratch it needed about twice the steps for the same loss."""
    if isinstance(config, dict):
        return {**config, "norm_num_groups": NORM_GROUPS}
    return dataclasses.replace(config, norm_num_groups=NORM_GROUPS)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"seconds": wall - start[0], "cpu_seconds": cpu - start[1]}


@torch.no_grad()
def world_latents(vae, seed: int, variants: int = VARIANTS_PER_KIND) -> list[tuple[str, torch.Tensor]]:
    """``(caption, unscaled latent (4, 8, 8))`` for ``variants`` jittered pictures of every seen kind."""
    rng = random.Random(seed)
    out = []
    for shape, colour, background in world.seen_combinations():
        scenes = [world.jittered(rng, shape, world.COLOURS[colour], world.BACKGROUNDS[background])
                  for _ in range(variants)]
        latents = vae.encode(world.to_tensor([world.draw(s) for s in scenes])).latent_dist.mode()
        text = world.caption(shape, colour, background)
        out.extend((text, z) for z in latents)
    return out


def init_text_encoder(te: torch.nn.Module, gen: torch.Generator) -> None:
    """CLIP's embedding init (token std 0.02, position std 0.01); other layers keep PyTorch's defaults."""
    emb = te.text_model.embeddings
    with torch.no_grad():
        emb.token_embedding.weight.normal_(0.0, 0.02, generator=gen)
        emb.position_embedding.weight.normal_(0.0, 0.01, generator=gen)


def build_family(spec, configs: dict, vae, data, steps: int, seed: int, extras: dict | None = None,
                 log: Callable[[str], None] = print):
    """Seed, build and train the UNet and text encoders of the family ``spec`` (a
    :class:`library.models.families.FamilySpec`) on ``data``; returns ``LoadedModels``."""
    from library.checkpoint.io import LoadedModels
    from library.models.text_encoders import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    unet = spec.build_unet(configs["unet"])
    tes = [(CLIPTextModelWithProjection if c.projection_dim else CLIPTextModel)(c) for c in configs["text_encoders"]]
    for te in tes:
        init_text_encoder(te, gen)
    base_fit.train_base(spec, unet, tes, data, steps, seed, log=log)
    return LoadedModels(spec.name, unet, tes, vae, configs, dict(extras or {}), None)


def build_all(out_dir: str | Path, families: Sequence[tuple[str, FamilySpec, dict, dict]], seed: int, vae_steps: int,
              unet_steps: int, variants: int = VARIANTS_PER_KIND,
              log: Callable[[str], None] = print) -> dict[str, dict]:
    """Train the shared VAE, then each ``(name, family spec, configs, extras)`` model on ``variants`` pictures per
    kind; write ``out_dir/toy_<name>.safetensors`` in fp16. Returns ``{name: {"path", "seconds", "cpu_seconds"}}``
    plus ``"vae"``: its wall and CPU seconds and its reconstruction error."""
    from library.checkpoint.io import save_models

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = _clock()
    vae = vae_fit.train_vae(families[0][2]["vae"], vae_steps, seed, log=log)
    for p in vae.parameters():
        p.requires_grad_(False)
    report: dict[str, dict] = {"vae": {**_since(start), "error": vae_fit.reconstruction_error(vae, seed + 2)}}
    data = world_latents(vae, seed, variants)
    for name, spec, configs, extras in families:
        start = _clock()
        configs = {**configs, "unet": toy_unet_config(configs["unet"])}
        models = build_family(spec, configs, vae, data, unet_steps, seed, extras, log)
        path = out_dir / f"toy_{name}.safetensors"
        save_models(models, path, dtype=torch.float16)
        report[name] = {"path": path, **_since(start)}
        log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {report[name]['seconds']:.0f} s")
    return report
