"""The training recipe ``Trainer.setup() / train() / train_step() / save_state()`` (torchtune-style).

kohya's run order (TRAINING.md §1), accumulation, clipping, NaN guard (§12, NonFiniteTrainingError),
checkpoints with pruning, bit-exact resume (§11), kohya's scalars (CLI.md §10); bad input: UserError.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from library.dataset import latent_cache
from library.dataset.config import CliDefaults
from library.dataset.dataset import BucketBatchDataset
from library.dataset.plan import build_plan
from library.dataset.prepare import prepare
from library.models.fp8 import apply_fp8_base
from library.errors import UserError
from library.log import setup_logging
from sd_train import (checkpointing, class_images, ema, interrupt, metadata, milestones, objective, optim,
                      pivotal, preflight, preservation, queue, resume, sampling, te_stop, tracking)
from sd_train import loss as loss_lib
from sd_train import noise as noise_lib
from sd_train.cli import build_parser, parse_options, write_output_config
from sd_train.families.base import family_kwargs
from sd_train.distributed import average_gradients, gloo_on_cpu, process_state
from sd_train.guard import NanGuard, batch_report, finite_flags
from sd_train.loader import EpochLoader
from sd_train.monitor import StepMonitor
from sd_train.narration import Narrator
from sd_train.network_host import NetworkHost, parse_network_args
from sd_train.resume import Progress
from sd_train.steps import compute_steps, effective_save_every_n_epochs
from sd_train.validation import Validator

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32, "fp32": torch.float32}


class Trainer:
    """One LoRA training run for a model family.

    Args:
        options: parsed :class:`sd_train.options.TrainOptions`.
        family: a :class:`sd_train.families.base.ModelFamily`.
    """

    def __init__(self, options, family):
        self.opts, self.family = options, family
        self.progress, self.losses = Progress(), loss_lib.LossRecorder()
        self.guard = NanGuard(max_consecutive=options.training.max_nan_steps)
        self.schedule = noise_lib.make_schedule(options.training.zero_terminal_snr)
        self.noise_opts = noise_lib.NoiseOptions.from_training(options.training)
        self.loss_opts = loss_lib.LossOptions.from_training(options.training, options.model.v_parameterization)
        self.final_saved, self.last_saved = False, None
        self.argv: list[str] = []  # the command line, for the resume command of an interrupted run

    def setup(self) -> bool:
        """Build everything in kohya's order (TRAINING.md §1 steps 2–9); False after --debug_dataset.
        The pre-flight checks (:mod:`sd_train.preflight`) run before any model loads."""
        self.opts = preflight.check_options(self.opts, self.family)
        self._seed()
        class_images.fill_reg_subsets(self)  # --generate_class_images: before the dataset scan
        if not self._setup_data():
            return False
        state = process_state(self.opts.training.ddp_timeout)
        preflight.check_planned_run(self, state.num_processes, disk=state.is_main_process)
        if self.opts.training.dry_run:  # the plan is printed and the pre-flight checks have passed
            return False
        self._setup_accelerator()
        self._setup_models()
        self._setup_network()
        self._release_cached_inputs()
        self._setup_optimizer()
        if self.opts.saving.resume:
            resume.load_state(self, self.opts.saving.resume)
        t = self.opts.training
        self.progress = resume.initial_progress(t.initial_step, t.initial_epoch, t.skip_until_initial_step,
                                                self.steps_per_epoch, self.max_train_steps,
                                                t.gradient_accumulation_steps) or self.progress
        self.ema, self.te_stop = ema.create(self), te_stop.TextEncoderStop(self)  # after the resume: state and step
        self.validator = Validator(self, self.val_dataset)
        self.metadata = self._build_metadata()
        return True

    def _seed(self) -> None:
        seed = self.opts.training.seed
        self.seed = random.randint(0, 2**32 - 1) if seed is None else seed
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        self.dataset_seed = random.randint(0, 2**31)  # kohya-compat: drawn right after seeding
        self.gen, self.rng = torch.Generator().manual_seed(self.seed), random.Random(self.seed)

    def _setup_data(self) -> bool:
        """Plan, scan and bucket the dataset; print and write its report before any model loads."""
        flat, s = self.opts.flat(), self.opts.saving
        defaults = CliDefaults(**{f.name: flat[f.name] for f in fields(CliDefaults) if f.name in flat})
        d = self.opts.dataset
        self.prepared = prepare(build_plan(defaults), seed=self.seed,
                                bucket_step_multiple=self.family.bucket_step_multiple,
                                latents_cached=d.cache_latents or d.cache_latents_to_disk)
        if self.opts.sampling.sample_prompts:
            sampling.load_prompts(self.opts.sampling.sample_prompts, warn=True)  # a bad file fails now, not mid-run
        if process_state(self.opts.training.ddp_timeout).is_main_process and not self.opts.training.dry_run:
            checkpointing.prepare_output_dir(s.output_dir)  # only rank 0 writes files; --dry_run writes none
        self.dataset = BucketBatchDataset(self.prepared.train, dataset_seed=self.dataset_seed)
        self.val_dataset = (BucketBatchDataset(self.prepared.validation, dataset_seed=self.dataset_seed)
                            if self.prepared.validation else None)
        self.narrator = Narrator.start(self.opts, self.prepared, len(self.dataset), self.family)  # reports, plan
        return not self.opts.dataset.debug_dataset

    def _setup_accelerator(self) -> None:
        log, mp = self.opts.logging, self.opts.model.mixed_precision
        stamp = (log.log_prefix or "") + time.strftime("%Y%m%d%H%M%S")  # kohya-compat: run folder name
        log_dir = log.logging_dir and os.path.join(log.logging_dir, stamp)
        self.accelerator = Accelerator(mixed_precision=mp or "no", project_dir=log_dir, cpu=gloo_on_cpu(),
                                       log_with=tracking.build_trackers(log, log_dir, lambda: self.progress))
        if mp == "fp16" and self.accelerator.device.type == "cpu":
            raise UserError("--mixed_precision fp16 needs a CUDA GPU (there is no fp16 autocast on the CPU); "
                            "use --mixed_precision bf16 or no")
        if self.opts.model.torch_compile:
            objective.check_compile_backend(self.opts.model.dynamo_backend)
        self.weight_dtype = DTYPES.get(mp, torch.float32)
        self.save_dtype = DTYPES.get(self.opts.saving.save_precision)

    def _setup_models(self) -> None:
        """Load, freeze and cast the base models; cache latents / TE outputs (TRAINING.md §2.2)."""
        m, d, device = self.opts.model, self.opts.dataset, self.accelerator.device
        load_device = device if m.lowram else "cpu"  # kohya-compat: --lowram loads straight to the GPU
        self.models = self.family.load(m.pretrained_model_name_or_path, vae_path=m.vae, device=load_device,
                                       mmap=not m.disable_mmap_load_safetensors, unet_dtype=self.weight_dtype)
        unet, vae = self.models.unet, self.models.vae
        for module in [unet, vae, *self.models.text_encoders]:
            module.requires_grad_(False).eval()
        torch.nn.Module.to(unet, device, self.weight_dtype)  # see the VAE below
        if m.xformers:
            self.family.use_xformers(unet)
        for te in self.models.text_encoders:
            te.to(device, self.weight_dtype if device.type != "cpu" else torch.float32)
        # torch's own to(): diffusers' override warns about fp32-kept modules even when it has none
        torch.nn.Module.to(vae, device, torch.float32 if m.no_half_vae else self.weight_dtype)
        show, tag = self.accelerator.is_local_main_process, self.family.spec.latent_cache_tag
        for ds in filter(None, (self.dataset, self.val_dataset)):
            if d.cache_latents or d.cache_latents_to_disk:
                latent_cache.cache_latents(
                    ds, self.family.latent_encoder(vae, device, self.gen), batch_size=d.vae_batch_size or 1,
                    to_disk=d.cache_latents_to_disk, skip_check=d.skip_cache_check, family_tag=tag, progress=show)
            if d.cache_text_encoder_outputs or d.cache_text_encoder_outputs_to_disk:
                latent_cache.cache_text_encoder_outputs(
                    ds, partial(self.family.cache_outputs, self.models.text_encoders),
                    batch_size=d.vae_batch_size or 1, to_disk=d.cache_text_encoder_outputs_to_disk, progress=show,
                    variant="weighted" if self.family.weighted_captions else "")
        if d.cache_latents or d.cache_latents_to_disk:
            vae.to("cpu")

    def _setup_network(self) -> None:
        """Merge --base_weights, create and apply the network, load --network_weights (NETWORKS.md §2)."""
        n, unet = self.opts.network, self.models.unet
        te = self.family.plugin_text_encoders(self.models)
        if n.base_weights:
            device = self.accelerator.device if self.opts.model.lowram else "cpu"
            NetworkHost.load(n.network_module or "networks.lora").merge_base_weights(
                n.base_weights, n.base_weights_multiplier, te, unet, self.weight_dtype, device)
        apply_fp8_base(unet, self.models.text_encoders, fp8_base=self.opts.model.fp8_base,  # after the merge, after
                       fp8_base_unet=self.opts.model.fp8_base_unet)  # caching (kohya); TRAINING.md §2.2
        self.train_te = not n.network_train_unet_only and not self.opts.dataset.cache_text_encoder_outputs
        self.host = NetworkHost.create(self.opts, self.models.vae, te, unet)
        preservation.check_support(self.host, [*self.prepared.train, *self.prepared.validation])
        self.host.apply_to(te, unet, self.train_te, not n.network_train_text_encoder_only)
        if n.network_weights:
            self.host.load_weights(n.network_weights)
        self.pivot = pivotal.setup(self)  # new tokens (pivotal tuning, textual inversion) train with the network
        self.train_te = self.train_te or bool(self.pivot and self.pivot.training)
        if self.opts.model.gradient_checkpointing:
            self.family.enable_gradient_checkpointing(unet, self.models.text_encoders if self.train_te else ())
            self.host.enable_gradient_checkpointing()
        m = self.opts.model
        self.unet_fn = objective.compile_unet(unet, m.dynamo_backend) if m.torch_compile else unet
        self.narrator.network_ready(self.host.network, self.accelerator.device)

    def _release_cached_inputs(self) -> None:
        """sd-train: free the VAE / text encoders once their outputs are cached and nothing else needs
        them (kohya keeps both resident: about 3.6 GB in fp32 for SDXL). Sampling still needs them."""
        d = self.opts.dataset
        if self.opts.sampling.sample_prompts:
            return
        if d.cache_latents or d.cache_latents_to_disk:
            self.models.vae.to("meta")
        if (d.cache_text_encoder_outputs or d.cache_text_encoder_outputs_to_disk) and not self.train_te:
            for te in self.models.text_encoders:
                te.to("meta")

    def _setup_optimizer(self) -> None:
        """Step arithmetic (CLI.md §7), optimizer, LR scheduler, ``accelerate.prepare``."""
        t, o, acc = self.opts.training, self.opts.optimizer, self.accelerator
        groups, self.lr_descriptions = self.host.prepare_optimizer_params(o)
        self.max_train_steps, self.steps_per_epoch, self.num_epochs = compute_steps(
            len(self.dataset), acc.num_processes, t.gradient_accumulation_steps, t.max_train_steps,
            t.max_train_epochs)
        self.dataset.max_train_steps = self.max_train_steps  # token warm-up fractions (CLI.md §7)
        every = effective_save_every_n_epochs(self.opts.saving, self.num_epochs)  # kohya-compat: --save_n_epoch_ratio
        self.opts = self.opts.replace(save_every_n_epochs=every)
        self.optimizer, self.optimizer_name = optim.build_optimizer(groups, o.optimizer_type, o.learning_rate,
                                                                    o.optimizer_args)
        self.scheduler_name = optim.resolve_lr_scheduler(o.optimizer_type, o.optimizer_args, o.lr_scheduler,
                                                         o.learning_rate)
        self.lr_scheduler = optim.build_scheduler(
            self.optimizer, self.scheduler_name, num_training_steps=self.max_train_steps,
            num_warmup_steps=o.lr_warmup_steps or 0, num_decay_steps=o.lr_decay_steps or 0,
            num_cycles=o.lr_scheduler_num_cycles, power=o.lr_scheduler_power,
            timescale=o.lr_scheduler_timescale, min_lr_ratio=o.lr_scheduler_min_lr_ratio,
            scheduler_type=o.lr_scheduler_type or "", scheduler_args=o.lr_scheduler_args,
            num_processes=acc.num_processes)
        if self.opts.model.full_fp16 or self.opts.model.full_bf16:
            self.host.network.to(self.weight_dtype)
        self.host.prepare_grad_etc(self.family.plugin_text_encoders(self.models), self.models.unet)
        self.network, self.optimizer, self.lr_scheduler = acc.prepare(self.host.network, self.optimizer,
                                                                      self.lr_scheduler)
        if self.opts.model.full_fp16:
            optim.allow_fp16_unscale(acc.scaler)
        self.monitor = StepMonitor(acc, self.lr_descriptions)

    def _build_metadata(self) -> dict[str, str]:
        """The ``ss_*`` / ``modelspec.*`` dict of this run (FORMAT.md §4–5)."""
        o, n = self.opts, self.opts.network
        json_keys = ("datasets", "tag_frequency", "dataset_dirs", "reg_dataset_dirs", "bucket_info")
        summary = {k[3:]: json.loads(v) if k[3:] in json_keys else v
                   for k, v in self.prepared.metadata_fields().items()}
        args = {"dropout": n.network_dropout, **parse_network_args(n.network_args)} if n.network_args else None
        run = {"session_id": random.Random().randint(0, 2**32), "training_started_at": time.time(),
               "seed": self.seed, "max_train_steps": self.max_train_steps, "num_train_epochs": self.num_epochs,
               "num_processes": self.accelerator.num_processes, "optimizer": self.optimizer_name,
               "network_args": args}
        info = self.family.model_info(o.model.pretrained_model_name_or_path, o.model.vae)
        opt = o.optimizer
        if self.scheduler_name != opt.lr_scheduler:  # kohya-compat: Adafactor's relative step rewrites both
            opt = replace(opt, lr_scheduler=self.scheduler_name, learning_rate=None)
        return metadata.build_metadata(o.model, o.dataset, o.training, opt, n, o.saving, summary=summary,
                                       model_info=info, run=run)

    def train(self) -> int:
        """Run epochs and optimizer steps with logging, saving and sampling cadence (CLI.md §7–11).

        Returns:
            0, or 130 when SIGINT/SIGTERM stopped the run (see :mod:`sd_train.interrupt`).
        """
        p, acc = self.progress, self.accelerator
        accum = self.opts.training.gradient_accumulation_steps
        tes = self.family.plugin_text_encoders(self.models)
        tracking.init_trackers(acc, self.opts)
        milestones.sample(self, None)  # --sample_at_first (only at step 0)
        d = self.opts.dataset
        loader = EpochLoader(self.dataset, acc.num_processes, acc.process_index, d.max_data_loader_n_workers,
                             d.persistent_data_loader_workers)
        with logging_redirect_tqdm(), interrupt.StopRequest() as stop, tqdm(  # log lines go above the bar
                total=self.max_train_steps, initial=p.global_step, desc="steps", disable=not acc.is_local_main_process
        ) as bar:
            self.monitor.bar = bar
            while p.epoch < self.num_epochs and p.global_step < self.max_train_steps:
                self.host.on_epoch_start(tes, self.models.unet)
                self.narrator.epoch_start(p.epoch + 1, p.global_step)
                n_batches, window = len(loader.indices()), []
                for index, batch in enumerate(loader.epoch(p.epoch, p.batch_index, p.global_step), start=p.batch_index):
                    self.host.on_step_start(tes, self.models.unet)
                    window.append(self.train_step(batch, accum))
                    p.batch_index, done = index + 1, not (index + 1) % accum or index + 1 == n_batches
                    self.losses.add(index, window[-1], p.global_step + done)  # kohya's step of this log row
                    if not done:
                        continue
                    self._optimizer_step(window, batch)
                    window, p.global_step = [], p.global_step + 1
                    ema.update(self, p.global_step)  # before this step's saves, samples or interrupt save
                    self.te_stop.after_step(self, p.global_step)
                    bar.update(1)
                    self._flush_losses()
                    if p.global_step < self.max_train_steps and stop.requested(acc):  # the step is done; its
                        return interrupt.save_interrupted(self)  # cadence saves and samples are left to the resume
                    milestones.after_step(self)
                    self.narrator.step_done(p.global_step)
                    if p.global_step >= self.max_train_steps:
                        break
                if p.batch_index >= n_batches:
                    milestones.end_epoch(self, p.epoch + 1)
        milestones.finish(self)
        self.narrator.finish(self)
        return 0

    def train_step(self, batch: dict, accum: int = 1) -> torch.Tensor:
        """One micro-batch: latents → noise → predict → loss → backward; returns the detached loss. No host
        sync: a non-finite loss makes the grad norm non-finite and :meth:`_optimizer_step` skips the window."""
        loss, self._last_timesteps = self.compute_loss(batch, self.gen, self.rng)
        self.accelerator.backward(loss / accum)
        return loss.detach()

    def compute_loss(self, batch: dict, gen: torch.Generator, rng: random.Random,
                     timestep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss of one batch and its timesteps (see :func:`sd_train.objective.batch_loss`)."""
        return objective.batch_loss(self, batch, gen, rng, timestep)

    def _optimizer_step(self, window: list[torch.Tensor], batch: dict) -> None:
        """Clip, check finiteness (one host sync per optimizer step), then step or skip (TRAINING.md §12)."""
        max_norm, step = self.opts.optimizer.max_grad_norm, self.progress.global_step + 1
        params = self.host.get_trainable_params()
        average_gradients(params, self.accelerator)
        norm = self.accelerator.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        loss_ok, norm_ok = finite_flags(torch.stack(window).sum(), norm)
        scaler = self.accelerator.scaler  # fp16: GradScaler skips its own overflow steps and lowers its scale
        self.monitor.before_step(self.optimizer)
        if loss_ok and (norm_ok or scaler is not None):
            self.optimizer.step()
            self.lr_scheduler.step()  # accelerate does not step it after a skipped GradScaler step
            if norm_ok:
                self.guard.record_ok()
        else:
            if scaler is not None:
                scaler.update()  # clip_grad_norm_ unscaled: reset GradScaler's step state, lower the scale
            report = batch_report(batch, self._last_timesteps)
            self.narrator.nan_skip(step, report)
            self.guard.record_skip(step, "loss or gradient norm", report)
        self.monitor.after_step(step, self.lr_scheduler, self.guard.skipped_total)
        self.optimizer.zero_grad(set_to_none=True)
        if self.opts.network.scale_weight_norms:
            self.host.apply_max_norm_regularization(self.opts.network.scale_weight_norms, self.accelerator.device)
        if getattr(self, "pivot", None):
            self.pivot.after_step()
        self.guard.check_params(params, step)

    def _flush_losses(self) -> None:
        """Read pending losses (one host sync) and log kohya's scalars with the learning rates of each step."""
        self.monitor.write(self.narrator.losses(self.losses.flush()))

    def save_state(self, kind: str, epoch: int | None = None) -> Path | None:
        """Write a state folder (see :func:`sd_train.resume.save_state`)."""
        return self.narrator.wrote(resume.save_state(self, kind, epoch), "state")

    def cleanup(self) -> None:
        """End accelerate's trackers; in a single process, forget accelerate's global state so that
        ``main()`` can run again in-process with other precision settings (tests, notebooks)."""
        Narrator.stop(self)  # a run that did not finish keeps its record and report
        if not hasattr(self, "accelerator"):  # stopped before accelerate started (bad input, --debug_dataset)
            return
        self.accelerator.end_training()
        if self.accelerator.num_processes == 1:
            AcceleratorState._reset_state(reset_partial_state=True)


def run(family_cls, argv: list[str] | None, entry: str) -> int:
    """Parse options (``entry``: a key of ``sd_train.families.ENTRIES``), then set up and train; returns 0."""
    options = parse_options(argv, entry)
    log = options.logging
    setup_logging(log.console_log_level, log.console_log_file, log.console_log_simple)
    if options.training.output_config:
        write_output_config(options, options.training.config_file, build_parser(entry))
        return 0
    trainer = Trainer(options, family_cls(**family_kwargs(options)))
    trainer.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = trainer.train() if trainer.setup() else 0
        if trainer.final_saved:
            queue.write_result(trainer)  # the final loss for sd_train_queue's table
        return code
    finally:
        trainer.cleanup()
