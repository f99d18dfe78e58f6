"""Torch Dataset that yields whole bucket batches in a seeded, worker-independent order.

Every random choice derives from private generators (DATASET.md §12): the epoch order from
``(dataset_seed, epoch)`` and each sample's flip / crop / caption draws from
``(dataset_seed, epoch, batch index, slot, repeat index)``. A batch is therefore a pure function
of the seed, the epoch and its index: resumable and independent of the number of workers.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from library.dataset import images as im
from library.dataset.buckets import crop_ltrb, crop_top_left
from library.dataset.captions import process_caption
from library.dataset.latent_cache import load_record_latents


class BucketBatchDataset(torch.utils.data.Dataset):
    """Batches of one bucket of one dataset; ``len()`` = batches per epoch (CLI.md §7).

    Args:
        prepared_datasets: ``PreparedDataset`` objects (``PreparedData.train`` or ``.validation``).
        dataset_seed: base of every random choice.
        load_images: False skips image decoding (captions/sizes only), e.g. for debugging.
        latent_scale: when set, cached latents are multiplied by it (None: raw latents).
        max_train_steps: for fractional ``token_warmup_step``.
        caption_rewrite: textual-inversion placeholders / templates
            (:class:`library.dataset.captions.CaptionRewrite`), applied to every caption first.

    Use with ``DataLoader(ds, batch_size=None, ...)`` or ``collate_fn=collate_first``.
    ``set_epoch`` / ``set_current_step`` write to a shared-memory tensor, so persistent workers
    see the new values.
    """

    def __init__(self, prepared_datasets, *, dataset_seed: int, load_images: bool = True,
                 latent_scale: float | None = None, max_train_steps: int | None = None, caption_rewrite=None):
        self.datasets = list(prepared_datasets)
        self.dataset_seed = int(dataset_seed)
        self.load_images = load_images
        self.latent_scale = latent_scale
        self.max_train_steps = max_train_steps
        self.caption_rewrite = caption_rewrite
        self.latents_cached = False
        self.te_cached = False
        self._state = torch.tensor([1, 0], dtype=torch.long).share_memory_()
        self._order_cache: tuple[int, list] | None = None
        self._slots = [(d, b, k) for d, ds in enumerate(self.datasets)
                       for b, (_, samples) in enumerate(ds.buckets)
                       for k in range(math.ceil(len(samples) / ds.batch_size))]

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def epoch(self) -> int:
        """The trainer's epoch, counted from 1."""
        return int(self._state[0])

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (from 1): selects the order and caption-dropout epochs."""
        self._state[0] = int(epoch)

    def set_current_step(self, step: int) -> None:
        """Set the global step (token warm-up)."""
        self._state[1] = int(step)

    def epoch_order(self, epoch: int) -> list[tuple[int, list]]:
        """``[(dataset index, [(record index, repeat index), ...]), ...]`` for one epoch."""
        if self._order_cache and self._order_cache[0] == epoch:
            return self._order_cache[1]
        rng = random.Random(f"order:{self.dataset_seed}:{epoch}")  # sd-train: private RNG
        batches = []
        for d, ds in enumerate(self.datasets):
            for _, samples in ds.buckets:
                samples = list(samples)
                rng.shuffle(samples)
                bs = ds.batch_size
                batches += [(d, samples[i:i + bs]) for i in range(0, len(samples), bs)]
        rng.shuffle(batches)
        self._order_cache = (epoch, batches)
        return batches

    def sample_rng(self, epoch: int, index: int, slot: int, repeat: int) -> random.Random:
        """The private generator of one sample of one epoch."""
        return random.Random(f"sample:{self.dataset_seed}:{epoch}:{index}:{slot}:{repeat}")

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch, step = self.epoch, int(self._state[1])
        d, samples = self.epoch_order(epoch)[index]
        ds = self.datasets[d]
        items = []
        for slot, (ri, repeat) in enumerate(samples):
            rng = self.sample_rng(epoch, index, slot, repeat)
            items.append(self._item(ds, ds.records[ri], rng, epoch, step))
        return self._collate(ds, items)

    def _item(self, ds, rec, rng: random.Random, epoch: int, step: int) -> dict:
        stats = ds.subsets[rec.subset]
        sub = stats.spec
        flipped = sub.flip_aug and rng.random() < 0.5
        item = {"rec": rec, "flipped": flipped, "image": None, "latents": None, "mask": None}
        if self.latents_cached:
            self._fill_latents(item, ds, rec, sub, flipped)
        elif self.load_images:
            self._fill_image(item, ds, rec, sub, rng, flipped)
        else:
            item["ltrb"] = crop_ltrb(rec.bucket, rec.size) if ds.spec.enable_bucket else None
            item["original"] = rec.size
        if self.te_cached:
            item["caption"] = rec.caption
        else:
            max_steps = self.max_train_steps or ds.max_train_steps
            item["caption"] = process_caption(rec.caption, stats.caption_options, rng,
                                              current_epoch=epoch, current_step=step,
                                              max_train_steps=max_steps, rewrite=self.caption_rewrite)
        return item

    def _fill_latents(self, item: dict, ds, rec, sub, flipped: bool) -> None:
        latents, latents_flipped, alpha, original, ltrb = load_record_latents(rec)
        if latents_flipped is None:  # cached without flipped latents: no flip
            flipped = item["flipped"] = False
        item["latents"] = latents_flipped if flipped else latents
        # kohya-compat: conditioning-image masks are read at every fetch, whatever the latent cache
        mask = self._conditioning_mask(ds, rec, sub) if rec.cond_path else alpha if sub.alpha_mask else None
        if mask is not None:
            item["mask"] = torch.flip(mask, dims=[1]) if flipped else mask
        item["original"], item["ltrb"] = original, ltrb

    @staticmethod
    def _conditioning_mask(ds, rec, sub) -> torch.Tensor:
        """``(H, W)`` mask in [0, 1] from the red channel of the record's conditioning image (same geometry)."""
        cond, _, _ = im.load_sample_array(ds.spec, rec, sub, None, path=rec.cond_path, resize_to_fit=True)
        return torch.from_numpy(np.ascontiguousarray(cond[..., 0])).float() / 255

    def _fill_image(self, item: dict, ds, rec, sub, rng: random.Random, flipped: bool) -> None:
        arr, original, ltrb = im.load_sample_array(ds.spec, rec, sub, rng)
        if rec.cond_path:
            item["mask"] = self._conditioning_mask(ds, rec, sub)
        elif sub.alpha_mask:
            item["mask"] = im.alpha_of(arr)
        if flipped:
            arr = arr[:, ::-1]
            if item["mask"] is not None:
                item["mask"] = torch.flip(item["mask"], dims=[1])
        if sub.color_aug:
            arr = im.color_aug(arr, rng)
        item["image"], item["original"], item["ltrb"] = im.to_tensor(arr), original, ltrb

    def _collate(self, ds, items: list[dict]) -> dict:
        bucket = items[0]["rec"].bucket
        sizes_hw, crops = [], []
        for it in items:
            sizes_hw.append((int(it["original"][1]), int(it["original"][0])))
            ltrb = it["ltrb"]
            crops.append((0, 0) if ltrb is None else crop_top_left(bucket, ltrb, it["flipped"]))
        weights = [ds.prior_loss_weight if it["rec"].is_reg else 1.0 for it in items]
        out = {"images": None, "latents": None, "alpha_masks": None,
               "captions": [it["caption"] for it in items],
               "loss_weights": torch.tensor(weights, dtype=torch.float32),
               "original_sizes_hw": torch.tensor(sizes_hw, dtype=torch.long),
               "crop_top_lefts": torch.tensor(crops, dtype=torch.long),
               "target_sizes_hw": torch.tensor([(bucket[1], bucket[0])] * len(items),
                                               dtype=torch.long),
               "image_paths": [it["rec"].path for it in items],
               "network_multipliers": torch.full((len(items),), ds.spec.network_multiplier),
               "custom_attributes": [dict(ds.subsets[it["rec"].subset].spec.custom_attributes)
                                     for it in items],
               "text_encoder_outputs": None}
        if items[0]["image"] is not None:
            out["images"] = torch.stack([it["image"] for it in items])
        if items[0]["latents"] is not None:
            latents = torch.stack([it["latents"] for it in items])
            out["latents"] = latents * self.latent_scale if self.latent_scale else latents
        if any(it["mask"] is not None for it in items):
            out["alpha_masks"] = torch.stack([it["mask"] if it["mask"] is not None
                                              else torch.ones(bucket[1], bucket[0])
                                              for it in items])
        if self.te_cached:
            outs = [it["rec"].te_outputs for it in items]
            out["text_encoder_outputs"] = tuple(torch.stack([o[j] for o in outs]) for j in range(3))
        return out


def collate_first(batch: list[dict]) -> dict:
    """``collate_fn`` for a DataLoader with ``batch_size=1``: unwraps the one bucket batch."""
    return batch[0]
