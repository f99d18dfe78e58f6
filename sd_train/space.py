"""Disk pre-flight: what a run will write, checked against the free space before any model loads.

sd-train: kohya finds a full disk when a save fails, hours in. The estimate adds, per filesystem:

- LoRA files: the network's size in ``--save_precision`` (counted from the checkpoint header with the
  targets of ``networks.lora``; other plugins are counted twice, an allowance for LoHa-style factors) × the
  files kept at once (final, ``--save_last_n_*`` or every step/epoch file, one more while a new one is
  written before the oldest is pruned);
- state folders (``--save_state``, the interrupted-run state): the network in fp32 plus the optimizer's state
  (slots per parameter by optimizer) × the folders kept;
- latent and text-encoder caches written next to the images (``*_to_disk``), for images without one.

A run that does not fit is refused in one line (``--force`` starts it anyway, with a warning).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from library.errors import UserError
from library.text.conditioning import CHUNK
from sd_train.disk import HEADER_ALLOWANCE, existing_parent, free_bytes, human

logger = logging.getLogger(__name__)
OPTIMIZER_SLOTS = {"adamw": 2, "adam": 2, "lion": 1, "sgdnesterov": 1, "sgd": 1, "prodigy": 4, "adafactor": 1,
                   "dadaptadam": 3, "dadaptation": 3, "dadaptlion": 2, "adamw8bit": 0.5, "lion8bit": 0.25}


def estimate_lora_numel(options, family_name: str) -> int | None:
    """Parameters (alphas included) of the run's network, counted from the checkpoint header with the targets of
    ``networks.lora`` (:func:`sd_train.plan.estimate_network`); other plugins count twice (LoHa-style factors).
    ``None`` when the model is not a local single file."""
    from sd_train.plan import estimate_network

    estimate = estimate_network(options, family_name, metadata_bytes=0)
    if estimate is None:
        return None
    numel = estimate.params + estimate.modules
    return numel if (options.network.network_module or "networks.lora") == "networks.lora" else 2 * numel


def files_kept(count: int, every: int | None, keep: int | None) -> int:
    """Files of one cadence on disk at once: ``keep`` (+1 while the next is written) or all ``count``."""
    if not every or count <= 0:
        return 0
    return min(count, keep + 1) if keep else count


def _saves(trainer) -> tuple[int, int]:
    """``(model files, state folders)`` on disk at the peak of the run."""
    s, steps, epochs = trainer.opts.saving, trainer.max_train_steps, trainer.num_epochs
    step_saves = (steps - 1) // s.save_every_n_steps if s.save_every_n_steps else 0
    epoch_saves = (epochs - 1) // s.save_every_n_epochs if s.save_every_n_epochs else 0
    step_files = files_kept(step_saves, s.save_every_n_steps, _keep_steps(s.save_last_n_steps, s.save_every_n_steps))
    epoch_files = files_kept(epoch_saves, s.save_every_n_epochs, s.save_last_n_epochs)
    models = 1 + step_files + epoch_files
    states = 0
    if s.save_state:
        states = 1 + files_kept(step_saves, s.save_every_n_steps,
                                _keep_steps(s.save_last_n_steps_state or s.save_last_n_steps, s.save_every_n_steps))
        states += files_kept(epoch_saves, s.save_every_n_epochs, s.save_last_n_epochs_state or s.save_last_n_epochs)
    elif s.save_state_on_train_end:
        states = 1
    if not s.no_save_on_interrupt:
        states = max(states, 1)  # an interrupted run writes one state folder (and its LoRA instead of the final)
    return models, states


def _keep_steps(keep_steps: int | None, every: int | None) -> int | None:
    """``--save_last_n_steps`` counts steps; as files: ``keep // every`` (+1 for the boundary)."""
    return None if keep_steps is None or not every else keep_steps // every + 1


def _te_cache_floats(family) -> int:
    """Floats of one caption's text-encoder output cache: each full-size encoder's hidden states over the padded
    caption (77 tokens per 75-token chunk) plus its pooled projection."""
    length = CHUNK * ((family.max_length - 2) // (CHUNK - 2))
    return sum(length * c.hidden_size + (c.projection_dim or 0) for c in family.spec.full_configs()["text_encoders"])


def _cache_needs(trainer) -> dict[str, int]:
    """Bytes of latent / text-encoder caches to write, by image folder (existing ``.npz`` files count 0)."""
    from library.dataset.latent_cache import latent_npz_path, te_npz_path

    d, out, tag = trainer.opts.dataset, {}, trainer.family.spec.latent_cache_tag
    te_floats = _te_cache_floats(trainer.family) if d.cache_text_encoder_outputs_to_disk else 0
    for ds in [*trainer.prepared.train, *trainer.prepared.validation]:
        for rec in ds.records:
            size = 0
            if d.cache_latents_to_disk and not os.path.exists(latent_npz_path(rec.path, rec.size, tag)):
                flips = 2 if ds.subsets[rec.subset].spec.flip_aug else 1
                size += 4 * 4 * (rec.bucket[0] // 8) * (rec.bucket[1] // 8) * flips + 4096
            if te_floats and not os.path.exists(te_npz_path(rec.path)):
                size += 4 * te_floats + 4096
            if size:
                folder = str(Path(rec.path).parent)
                out[folder] = out.get(folder, 0) + size
    return out


def needs(trainer) -> dict[str, tuple[int, list[str]]]:
    """What the run writes: ``{folder: (bytes, [what, ...])}`` (one entry per folder written to)."""
    o, s = trainer.opts, trainer.opts.saving
    result: dict[str, tuple[int, list[str]]] = {}

    def add(folder: str, size: int, what: str) -> None:
        total, items = result.get(folder, (0, []))
        result[folder] = (total + size, [*items, what])

    numel = estimate_lora_numel(o, trainer.family.name)
    if numel is not None:
        bytes_per = {"fp16": 2, "bf16": 2, "float": 4}.get(s.save_precision or "",
                                                           2 if o.model.full_fp16 or o.model.full_bf16 else 4)
        lora = numel * bytes_per + HEADER_ALLOWANCE
        slots = OPTIMIZER_SLOTS.get((o.optimizer.optimizer_type or "adamw").lower(), 2)
        state = int(numel * 4 * (1 + slots)) + HEADER_ALLOWANCE
        models, states = _saves(trainer)
        add(s.output_dir, models * lora, f"{models} LoRA file(s) of {human(lora)}")
        if states:
            add(s.output_dir, states * state, f"{states} state folder(s) of {human(state)}")
    for folder, size in _cache_needs(trainer).items():
        add(folder, size, f"caches next to the images in {folder}")
    return result


def check(trainer) -> None:
    """Refuse (or, with ``--force``, warn about) a run whose files do not fit their filesystems.

    Raises:
        UserError: a filesystem has less free space than the run will write there (one line).
    """
    by_device: dict[int, tuple[str, int, list[str]]] = {}
    for folder, (size, items) in needs(trainer).items():
        dev = existing_parent(folder).stat().st_dev
        first, total, all_items = by_device.get(dev, (folder, 0, []))
        by_device[dev] = (first, total + size, [*all_items, *items])
    for folder, size, items in by_device.values():
        free = free_bytes(folder)
        if free < 0 or size <= free:
            continue
        line = (f"{folder}: the run will write about {human(size)} on this filesystem ({', '.join(items)}) but "
                f"only {human(free)} are free")
        if not trainer.opts.saving.force:
            raise UserError(f"{line}; free some space, choose another --output_dir, keep fewer files "
                            "(--save_last_n_epochs / --save_last_n_steps), or pass --force to start anyway")
        logger.warning("%s; starting anyway (--force)", line)
