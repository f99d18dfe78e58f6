"""The pre-flight plan as text: one labelled line per topic (see :mod:`sd_train.plan`)."""

from __future__ import annotations

import os

from library.report.units import disk_size, human_size
from sd_train.checkpointing import model_file_name, state_dir_name
from sd_train.network_host import parse_network_args


def _lr(value: float) -> str:
    return f"{value:.3g}"


def _network(plan, opts) -> str:
    if plan.embeddings_only:
        ti = opts.textual_inversion
        return (f"textual inversion: {ti.num_vectors_per_token} vector(s) for '{ti.token_string}'; only these new "
                "token embeddings train")
    n = opts.network
    args = parse_network_args(n.network_args)
    conv = f"conv {args['conv_dim']}/{args.get('conv_alpha', 1)}" if args.get("conv_dim") else "no conv layers"
    unet, te = plan.trains_unet, plan.trains_te
    parts = "UNet and text encoders" if unet and te else "UNet only" if unet else "text encoders only"
    why = " (text encoder outputs are cached)" if plan.te_cached and unet else ""
    line = (f"{n.network_module or 'networks.lora'}, dim {n.network_dim or 'plugin default'} alpha "
            f"{n.network_alpha:g}, {conv}; trains {parts}{why}")
    e = plan.estimate
    if e is not None:
        parts = [f"{count} {where}" for count, where in ((e.unet_modules, "UNet"), (e.te_modules, "text encoder"))
                 if count]
        line += f"; ~{e.modules} modules ({', '.join(parts)}), {e.params:,} parameters"
    return line


def _optimizer(plan, opts) -> list[str]:
    o, lr = opts.optimizer, plan.lr
    name = o.optimizer_type or "AdamW"
    args = f" ({', '.join(o.optimizer_args)})" if o.optimizer_args else ""
    warm = f", warm-up {lr.warmup_steps} steps" if lr.warmup_steps else ", no warm-up"
    lines = [f"{name}{args}; scheduler {lr.scheduler}{warm}"]
    groups = {"embeddings": lr.groups["unet"]} if plan.embeddings_only and lr.groups else lr.groups
    for group, (start, peak, at, end) in groups.items():
        if (group == "unet" and not plan.trains_unet) or (group.startswith("textencoder") and not plan.trains_te):
            continue
        lines.append(f"LR {group}: start {_lr(start)}, peak {_lr(peak)} at step {at}, end {_lr(end)}")
    if lr.note:
        lines.append(lr.note)
    return lines


def _data(plan, report) -> list[str]:
    lines = []
    for d in report["datasets"]:
        for s in d["subsets"]:
            reg = " (regularization)" if s["is_reg"] else ""
            lines.append(f"{s['image_dir'] or s['metadata_file']}: {s['img_count']} images × {s['num_repeats']} "
                         f"repeats = {s['img_count'] * s['num_repeats']} samples{reg}")
    batch = ", ".join(str(d["batch_size"]) for d in report["datasets"])
    lines.append(f"{plan.samples_per_epoch} samples per epoch, batch size {batch} → {plan.batches_per_epoch} "
                 "batches per epoch")
    return lines


def _steps(plan, opts) -> str:
    t = opts.training
    return (f"{plan.batches_per_epoch} batches ÷ {plan.num_processes} process(es) ÷ accumulation "
            f"{t.gradient_accumulation_steps} → {plan.steps_per_epoch} optimizer steps per epoch; "
            f"{plan.num_epochs} epochs, {plan.max_train_steps} optimizer steps in all")


def _saves(plan, opts) -> list[str]:
    s, name, ext = opts.saving, opts.saving.output_name, opts.saving.save_model_as
    size = plan.estimate.file_bytes if plan.estimate else None
    each = f"~{human_size(size)} each" if size else "size not estimated"
    lines = []
    if plan.save_epochs:
        first = model_file_name("epoch", name, ext, plan.save_epochs[0])
        keep = f"keeps the last {s.save_last_n_epochs} epoch files" if s.save_last_n_epochs else "keeps all"
        lines.append(f"every {plan.every_epochs} epoch(s): {len(plan.save_epochs)} file(s) like {first}, {keep}")
    if plan.save_steps:
        first = model_file_name("step", name, ext, plan.save_steps[0])
        keep = f"keeps those of the last {s.save_last_n_steps} steps" if s.save_last_n_steps else "keeps all"
        lines.append(f"every {s.save_every_n_steps} steps: {len(plan.save_steps)} file(s) like {first}, {keep}")
    lines.append(f"at the end: {model_file_name('final', name, ext)}; {plan.save_precision}, {each}")
    if s.save_state:
        lines.append(f"state folders with every save and at the end ({state_dir_name('final', name)})")
    elif s.save_state_on_train_end:
        lines.append(f"state folder at the end ({state_dir_name('final', name)})")
    return lines


def _validation(opts, report) -> list[str]:
    images = sum(d["num_images"] for d in report["validation"])
    if not images:
        return []
    t = opts.training
    steps = f"every {t.validate_every_n_steps} steps and " if t.validate_every_n_steps else ""
    cap = f", at most {t.max_validation_steps} batches" if t.max_validation_steps else ""
    return [f"{images} held-out images, {steps}every {t.validate_every_n_epochs or 1} epoch(s){cap}"]


def _samples(plan, opts) -> str:
    sp = opts.sampling
    if not sp.sample_prompts:
        return "none (--sample_prompts FILE renders images during training)"
    if sp.sample_every_n_epochs:
        cadence = f"every {sp.sample_every_n_epochs} epoch(s)"
    elif sp.sample_every_n_steps:
        cadence = f"every {sp.sample_every_n_steps} steps"
    else:
        cadence = "never during training (set --sample_every_n_epochs or --sample_every_n_steps)"
    first = " and before the first step" if sp.sample_at_first else ""
    total = plan.sample_times * plan.num_prompts
    where = os.path.join(opts.saving.output_dir or ".", "sample")
    return f"{plan.num_prompts} prompt(s) {cadence}{first}: {total} images in {where}"


def _logs(opts) -> str:
    log = opts.logging
    if not log.logging_dir:
        return "no TensorBoard logs (--logging_dir DIR adds them, and the loss/LR curves of the report)"
    run_dir = os.path.join(log.logging_dir, f"{log.log_prefix or ''}YYYYmmddHHMMSS")
    return f"{run_dir}; watch with: tensorboard --logdir {log.logging_dir}"


def format_plan(plan, opts, report: dict, family) -> list[str]:
    """The plan's lines (``plan:`` header, then ``  label  text`` rows)."""
    model = opts.model.pretrained_model_name_or_path or "(none)"
    size = disk_size(model)
    base = f"{model} ({human_size(size)})" if size is not None else f"{model} (not a local file: fetched at load)"
    name = opts.saving.output_name or "last"
    rows = [("family", f"{family.name} ({family.base_model_version()}); base model {base}"),
            ("network", _network(plan, opts)),
            *[("optimizer", line) for line in _optimizer(plan, opts)],
            *[("data", line) for line in _data(plan, report)],
            ("steps", _steps(plan, opts)),
            *[("saves", line) for line in _saves(plan, opts)],
            *[("validation", line) for line in _validation(opts, report)],
            ("samples", _samples(plan, opts)),
            ("logs", _logs(opts)),
            ("report", os.path.join(opts.saving.output_dir or ".", f"{name}_report.html"))]
    return ["plan:"] + labelled(rows)


def labelled(rows: list[tuple[str, str]], width: int = 12) -> list[str]:
    """``  label     text`` lines; a label repeated on consecutive rows is shown once."""
    lines, previous = [], None
    for label, text in rows:
        lines.append(f"  {label if label != previous else '':<{width}}{text}")
        previous = label
    return lines
