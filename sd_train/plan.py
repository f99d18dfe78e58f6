"""The pre-flight plan: what a run will do, printed after the dataset report and before any model loads.

:func:`build_plan` is a function of the options, the dataset report and the DataLoader length (plus the
base model's file size and safetensors header); the step arithmetic is the trainer's own
(:func:`sd_train.steps.compute_steps`), so the plan's numbers are the run's. ``--dry_run`` prints it
and exits 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from library.errors import UserError
from library.lora.estimate import LoraEstimate, estimate_lora, header_shapes
from sd_train.network_host import parse_network_args
from sd_train.plan_format import format_plan
from sd_train.plan_lr import LrPreview, preview_lr
from sd_train.steps import compute_steps, effective_save_every_n_epochs

SAVE_BYTES = {"fp16": 2, "bf16": 2, "float": 4, None: 4}
METADATA_GUESS = 6000  # bytes of ss_*/modelspec.* metadata besides the dataset fields


@dataclass
class RunPlan:
    """The numbers of a run, as the trainer will use them, and the lines that show them."""

    max_train_steps: int
    steps_per_epoch: int
    num_epochs: int
    batches_per_epoch: int
    num_processes: int
    samples_per_epoch: int
    save_epochs: list[int] = field(default_factory=list)
    save_steps: list[int] = field(default_factory=list)
    sample_times: int = 0
    num_prompts: int = 0
    every_epochs: int | None = None
    trains_unet: bool = True
    trains_te: bool = True
    te_cached: bool = False
    save_precision: str = "float"
    embeddings_only: bool = False
    estimate: LoraEstimate | None = None
    lr: LrPreview | None = None
    lines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready numbers and lines (stored in the run record)."""
        return {"max_train_steps": self.max_train_steps, "steps_per_epoch": self.steps_per_epoch,
                "num_epochs": self.num_epochs, "batches_per_epoch": self.batches_per_epoch,
                "num_processes": self.num_processes, "samples_per_epoch": self.samples_per_epoch,
                "save_epochs": self.save_epochs, "save_steps": self.save_steps, "sample_times": self.sample_times,
                "estimated_file_bytes": self.estimate.file_bytes if self.estimate else None,
                "embeddings_only": self.embeddings_only, "lines": self.lines}


def trained_parts(opts) -> tuple[bool, bool, bool]:
    """``(UNet trains, text encoders train, TE outputs cached)``: kohya's rules (cached outputs freeze the TEs)."""
    n, d = opts.network, opts.dataset
    cached = d.cache_text_encoder_outputs or d.cache_text_encoder_outputs_to_disk
    return not n.network_train_text_encoder_only, not n.network_train_unet_only and not cached, bool(cached)


def save_precision(opts) -> str:
    """dtype name of saved weights: ``--save_precision``, else the network's training dtype."""
    m = opts.model
    return opts.saving.save_precision or ("fp16" if m.full_fp16 else "bf16" if m.full_bf16 else "float")


def estimate_network(opts, family_name: str, metadata_bytes: int = METADATA_GUESS) -> LoraEstimate | None:
    """The file ``networks.lora`` would write for this run, from the base model's header (``None`` when unknown:
    not a local ``.safetensors`` file, or ranks taken from ``--network_weights``)."""
    n = opts.network
    if n.dim_from_weights:
        return None
    try:
        shapes = header_shapes(opts.model.pretrained_model_name_or_path or "")
    except (UserError, OSError):
        return None
    if not shapes:
        return None
    args = parse_network_args(n.network_args)
    try:  # a malformed number is the plugin's to report, in its own words, when it builds the network
        dim, conv_dim = int(n.network_dim or 4), int(args["conv_dim"]) if args.get("conv_dim") else None
    except (TypeError, ValueError):
        return None
    unet, te, _ = trained_parts(opts)
    return estimate_lora(shapes, family_name, dim, conv_dim, unet=unet, text_encoders=te,
                         bytes_per_value=SAVE_BYTES[save_precision(opts)], metadata_bytes=metadata_bytes)


def _is_lora(opts, family) -> bool:
    """The run trains ``networks.lora`` (whose file the plan can size), not another plugin or an embedding."""
    return (opts.network.network_module or "networks.lora") == "networks.lora" and not family.embeddings_only


def _every(total: int, every: int | None) -> list[int]:
    """Multiples of ``every`` below ``total`` (the final save is separate)."""
    return list(range(every, total, every)) if every and every > 0 else []


def _sample_times(sampling, full_epochs: int, max_steps: int) -> int:
    """Sampling rounds: before training, then at the end of every N-th *complete* epoch or every N steps."""
    if not sampling.sample_prompts:
        return 0
    times = int(bool(sampling.sample_at_first))
    if sampling.sample_every_n_epochs:
        return times + full_epochs // sampling.sample_every_n_epochs
    if sampling.sample_every_n_steps:
        return times + max_steps // sampling.sample_every_n_steps
    return times


def build_plan(opts, report: dict, batches: int, num_processes: int, family, num_prompts: int = 0,
               metadata_bytes: int = METADATA_GUESS) -> RunPlan:
    """Plan one run.

    Args:
        opts: the run's :class:`sd_train.options.TrainOptions`.
        report: the dataset report (:meth:`library.dataset.prepare.PreparedData.report`).
        batches: length of the training DataLoader (all processes), as the trainer counts it.
        num_processes: processes of the launch.
        family: the model family (``name``, ``base_model_version()``).
        num_prompts: prompts in ``--sample_prompts``.
        metadata_bytes: size of the metadata the LoRA file will carry (for its size estimate).
    """
    t, s = opts.training, opts.saving
    max_steps, per_epoch, epochs = compute_steps(batches, num_processes, t.gradient_accumulation_steps,
                                                 t.max_train_steps, t.max_train_epochs)
    every_epochs = effective_save_every_n_epochs(s, epochs)
    unet, te, cached = trained_parts(opts)
    plan = RunPlan(max_train_steps=max_steps, steps_per_epoch=per_epoch, num_epochs=epochs,
                   batches_per_epoch=batches, num_processes=num_processes,
                   samples_per_epoch=sum(d["num_samples"] for d in report["datasets"]),
                   save_epochs=_every(epochs, every_epochs), save_steps=_every(max_steps, s.save_every_n_steps),
                   sample_times=_sample_times(opts.sampling, max_steps // per_epoch, max_steps),
                   num_prompts=num_prompts,
                   every_epochs=every_epochs, trains_unet=unet, trains_te=te, te_cached=cached,
                   save_precision=save_precision(opts), embeddings_only=family.embeddings_only,
                   estimate=estimate_network(opts, family.name, metadata_bytes) if _is_lora(opts, family) else None)
    plan.lr = preview_lr(opts.optimizer, max_steps, num_processes)
    plan.lines = format_plan(plan, opts, report, family)
    return plan
