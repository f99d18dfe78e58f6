"""kohya sampler names -> diffusers schedulers configured with the training noise schedule.

Shared by in-training sampling (``sd_train.sampling``) and the class-image generator
(:mod:`library.prep.class_images`), so both accept the same names and sample the same way.
"""

from __future__ import annotations

SCHEDULERS = {  # kohya sampler name -> diffusers class (ddim is the fallback, kohya-compat)
    "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
    "k_lms": "LMSDiscreteScheduler", "euler": "EulerDiscreteScheduler",
    "k_euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "k_euler_a": "EulerAncestralDiscreteScheduler", "dpmsolver": "DPMSolverMultistepScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler", "dpmsingle": "DPMSolverSinglestepScheduler",
    "heun": "HeunDiscreteScheduler", "dpm_2": "KDPM2DiscreteScheduler",
    "k_dpm_2": "KDPM2DiscreteScheduler", "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "k_dpm_2_a": "KDPM2AncestralDiscreteScheduler",
}


def make_scheduler(name: str | None, v_parameterization: bool):
    """diffusers scheduler for a kohya sampler name, configured with the training schedule."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS.get((name or "ddim").lower(), "DDIMScheduler"))
    kwargs = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear",
              "prediction_type": "v_prediction" if v_parameterization else "epsilon"}
    if "dpmsolver++" == (name or "").lower():
        kwargs["algorithm_type"] = "dpmsolver++"
    return cls(**kwargs)
