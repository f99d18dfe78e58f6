"""Sample-image options (CLI.md §5.11)."""

from __future__ import annotations

from dataclasses import dataclass

from sd_train.options.base import flag, opt

SAMPLERS = (
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
    "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)


@dataclass(frozen=True)
class SamplingOptions:
    """Sample images during training."""

    sample_prompts: str | None = opt(None, "Prompt file (.txt, .toml or .json)", common=True)
    sample_every_n_steps: int | None = opt(None, "Sample every N optimizer steps", type=int)
    sample_every_n_epochs: int | None = opt(
        None, "Sample every N epochs (then --sample_every_n_steps is ignored)", type=int)
    sample_at_first: bool = flag("Sample once before the first step")
    sample_sampler: str | None = opt(None, "Sampler of the sample images (default: euler_a for SDXL, ddim for SD1/SD2)",
                                     choices=SAMPLERS)
