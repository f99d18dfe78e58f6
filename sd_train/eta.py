"""How long the rest of a run will take: measured step times plus the saves and samples still to come.

Pure arithmetic. A sample image costs ``sample_steps`` UNet evaluations of a batch of two (guidance);
until one has been timed, it is estimated from the training step: a step of ``b`` images is about three
UNet passes (forward and a backward twice as costly), scaled by the pixel ratio of the two sizes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from library.report.units import duration

SAVE_BYTES_PER_SECOND = 200e6  # a conservative disk write speed for a save not yet timed
PASSES_PER_TRAIN_STEP = 3.0


def median(values: list[float]) -> float:
    """Median of ``values`` (0.0 for none)."""
    return statistics.median(values) if values else 0.0


def sample_image_seconds(step_seconds: float, images_per_step: int, train_pixels: int, sample_pixels: int,
                         sample_steps: int) -> float:
    """Estimated seconds to render one sample image from the measured training step time."""
    per_image_pass = step_seconds / PASSES_PER_TRAIN_STEP / max(1, images_per_step)
    return sample_steps * 2 * per_image_pass * sample_pixels / max(1, train_pixels)


@dataclass
class Remaining:
    """The parts of the time still to come, in seconds."""

    steps: int
    step_seconds: float
    saves: int
    save_seconds: float
    images: int
    image_seconds: float

    @property
    def total(self) -> float:
        """All of it."""
        return self.steps * self.step_seconds + self.saves * self.save_seconds + self.images * self.image_seconds

    def describe(self) -> str:
        """``80 steps × 0.81 s + 2 saves × 0.3 s + 4 images × 0.5 s = 1m 7s``."""
        parts = [f"{self.steps} steps × {self.step_seconds:.2f} s"]
        if self.saves:
            parts.append(f"{self.saves} saves × {self.save_seconds:.1f} s")
        if self.images:
            parts.append(f"{self.images} sample images × {self.image_seconds:.1f} s")
        return " + ".join(parts) + f" = {duration(self.total)}"


def remaining(plan, opts, prompts: list, report: dict, clock, step: int, saves_done: int) -> Remaining:
    """Time still to come after optimizer step ``step``, from the run's plan and what ``clock``
    (:class:`sd_train.run_stats.Clock`) measured so far."""
    step_s = clock.step_seconds
    saves_left = max(0, len(plan.save_epochs) + len(plan.save_steps) + 1 - saves_done)
    size = plan.estimate.file_bytes if plan.estimate else 0
    save_s = median(clock.save_seconds) or 0.5 + size / SAVE_BYTES_PER_SECOND
    images_left = max(0, plan.sample_times * plan.num_prompts - len(clock.image_seconds) * plan.num_prompts)
    image_s = median(clock.image_seconds)
    if not image_s and prompts:
        first = report["datasets"][0]
        width, height = first["resolution"]
        per_step = first["batch_size"] * opts.training.gradient_accumulation_steps
        pixels = sum(p.width * p.height for p in prompts) / len(prompts)
        steps = sum(p.sample_steps for p in prompts) / len(prompts)
        image_s = sample_image_seconds(step_s, per_step, width * height, int(pixels), int(steps))
    return Remaining(max(0, plan.max_train_steps - step), step_s, saves_left, save_s, images_left, image_s)
