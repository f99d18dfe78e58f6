"""The toy lesson: teach a toy base model the held-out colour with a LoRA and measure what it learned.

One recipe for the quickstart, the learning tests and the convergence benchmark: the concept dataset
(:mod:`library.toyworld.dataset`), a LoRA trained through the real trainer entry point of the model's family
(``sdxl_train_network`` for :data:`TOY_SDXL`), and :class:`Lesson` numbers from images rendered with the same seeds with and without the LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from library.toyworld import asset_path, world

TRIGGER_PROMPT = f"a {world.TRIGGER} circle on a white background"
CONTROL_PROMPT = "a red square on a black background"
SEEDS = (1, 2, 3)
STEPS = 160  # LoRA optimizer steps of the quickstart and the learning tests
# Min-SNR (γ 5) steadies the lesson on this world: without it the green share swings between checkpoints 20
# steps apart (benchmarks/README.md, "Convergence on the toy world").
TRAIN_FLAGS = ("--network_module", "networks.lora", "--network_dim", "4", "--network_alpha", "4",
               "--learning_rate", "5e-3", "--optimizer_type", "AdamW", "--min_snr_gamma", "5", "--seed", "42",
               "--cache_latents", "--max_data_loader_n_workers", "0", "--save_model_as", "safetensors")


@dataclass(frozen=True)
class ToyModel:
    """A committed toy base model: its ``make_tiny_model`` arch (naming ``assets/toy/toy_<arch>.safetensors``)
    and the trainer entry that trains LoRAs for it (:func:`sd_train.entry.entry_point`)."""

    arch: str
    entry: str

    @property
    def path(self) -> Path:
        """The committed checkpoint."""
        return asset_path(self.arch)

    def load(self):
        """``(family strategy object, LoadedModels)`` of the checkpoint."""
        from sd_train.families import family_class

        family = family_class(self.entry)()
        return family, family.load(str(self.path))


TOY_SDXL = ToyModel("sdxl", "sdxl")  # the one committed (docs/DECISIONS.md, "The toy world")


def train_concept_lora(out_dir: str | Path, steps: int = STEPS, extra_flags: Sequence[str] = (),
                       name: str = "toy_sks", model: ToyModel = TOY_SDXL) -> Path:
    """Write the concept dataset under ``out_dir/dataset`` and train ``out_dir/<name>.safetensors`` on the
    committed toy ``model`` through its trainer entry point; ``extra_flags`` override :data:`TRAIN_FLAGS`."""
    from library.toyworld.dataset import make_concept_dataset
    from sd_train.entry import entry_point

    out_dir = Path(out_dir)
    toml = make_concept_dataset(out_dir / "dataset")
    code = entry_point(model.entry, ["--pretrained_model_name_or_path", str(model.path), "--dataset_config",
                                     str(toml), "--output_dir", str(out_dir), "--output_name", name,
                                     "--max_train_steps", str(steps), *TRAIN_FLAGS, *extra_flags])
    if code:
        raise RuntimeError(f"LoRA training failed with exit status {code}")
    return out_dir / f"{name}.safetensors"


def lesson_prompts(seeds: Sequence[int] = SEEDS) -> list:
    """The trigger prompt, then the control prompt, once per seed (toy sampling settings)."""
    from sd_train.lora_preview import toy_prompt

    return [toy_prompt(text, seed) for text in (TRIGGER_PROMPT, CONTROL_PROMPT) for seed in seeds]


@dataclass(frozen=True)
class Lesson:
    """What a LoRA changed, from images of :func:`lesson_prompts` rendered without and with it.

    Attributes:
        trigger_before, trigger_after: mean share of held-out-colour pixels in the trigger images.
        control_after: the same share in the control images with the LoRA.
        control_change: mean absolute difference (0–255 levels) of the control images, with vs without.
    """

    trigger_before: float
    trigger_after: float
    control_after: float
    control_change: float

    @property
    def gain(self) -> float:
        """Rise of the held-out colour's share in the trigger images."""
        return self.trigger_after - self.trigger_before

    def __str__(self) -> str:
        return (f"trigger green {self.trigger_before:.3f} -> {self.trigger_after:.3f} (gain {self.gain:+.3f}), "
                f"control green {self.control_after:.3f}, control change {self.control_change:.1f} levels")


def measure(before: Sequence, after: Sequence) -> Lesson:
    """:class:`Lesson` from the images of :func:`lesson_prompts` without (``before``) and with (``after``)."""
    half = len(before) // 2

    def share(images) -> float:
        return float(np.mean([world.colour_share(im, world.HELD_OUT) for im in images]))

    diffs = [np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()
             for a, b in zip(before[half:], after[half:])]
    return Lesson(share(before[:half]), share(after[:half]), share(after[half:]), float(np.mean(diffs)))
