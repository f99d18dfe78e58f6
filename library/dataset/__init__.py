"""The dataset layer: declaration -> plan -> pre-pass -> bucket batches (DATASET.md).

Typical use by the trainer::

    plan = build_plan(CliDefaults(dataset_config="data.toml"))
    data = prepare(plan, seed=42, bucket_step_multiple=32)
    print(data.format_report())
    train = BucketBatchDataset(data.train, dataset_seed=123)
    cache_latents(train, vae_sample_fn, batch_size=4, to_disk=True, family_tag="sdxl")

What lives here: the dataset TOML and folder conventions (``config``, ``specs``, ``plan``), scanning and
captions (``scan``, ``captions``), buckets and splits (``buckets``, ``split``), the pre-pass and its
report (``prepare``, ``checks``, ``report``, ``records``), images and the torch dataset (``images``,
``dataset``) and the latent / text-encoder-output caches (``latent_cache``). Nothing here knows a model
family: what differs (bucket step, cache file tag) comes in as arguments.

May import: ``library.errors``.
"""

from library.dataset.config import CliDefaults
from library.dataset.dataset import BucketBatchDataset, collate_first
from library.dataset.latent_cache import cache_latents, cache_text_encoder_outputs
from library.dataset.plan import build_plan, plan_from_data
from library.dataset.prepare import PreparedData, prepare
from library.dataset.records import ImageRecord, PreparedDataset
from library.dataset.specs import DatasetPlan, DatasetSpec, SubsetSpec

__all__ = [
    "BucketBatchDataset", "CliDefaults", "DatasetPlan", "DatasetSpec", "ImageRecord",
    "PreparedData", "PreparedDataset", "SubsetSpec", "build_plan", "cache_latents",
    "cache_text_encoder_outputs", "collate_first", "plan_from_data", "prepare",
]
