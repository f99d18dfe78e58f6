"""kohya sampler names -> diffusers schedulers configured with the training noise schedule.

Shared by in-training sampling (``sd_train.sampling``) and the class-image generator
(:mod:`library.prep.class_images`), so both accept the same names and sample the same way.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

from library.errors import UserError

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
PNDM_ORDER = 4  # diffusers' PNDMScheduler.pndm_order: its Runge-Kutta warm-up needs this many steps


def make_scheduler(name: str | None, v_parameterization: bool, steps: int | None = None):
    """diffusers scheduler for a kohya sampler name, configured with the training schedule.

    kohya-compat: ``dpmsolver`` is DPM-Solver (``algorithm_type="dpmsolver"``), ``dpmsolver++`` DPM-Solver++;
    an unknown name falls back to DDIM. sd-train: PNDM with fewer than 4 ``steps`` skips its Runge-Kutta
    warm-up (diffusers cannot schedule it; kohya crashes there).
    """
    import diffusers

    key = (name or "ddim").lower()
    cls = getattr(diffusers, SCHEDULERS.get(key, "DDIMScheduler"))
    kwargs = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear",
              "prediction_type": "v_prediction" if v_parameterization else "epsilon"}
    if key in ("dpmsolver", "dpmsolver++"):
        kwargs["algorithm_type"] = key  # kohya-compat
    if key == "dpmsolver":  # diffusers ≥ 0.26 refuses its default final sigma 0 here; older ones used sigma_min
        kwargs["final_sigmas_type"] = "sigma_min"
    if key == "pndm" and steps is not None and steps < PNDM_ORDER:
        kwargs["skip_prk_steps"] = True
    with warnings.catch_warnings():  # diffusers deprecates algorithm_type="dpmsolver" (kohya's choice)
        warnings.simplefilter("ignore", FutureWarning)
        return cls(**kwargs)


def step_kwargs(scheduler, generator) -> dict:
    """``generator`` and ``eta`` (0) for ``scheduler.step``, each only when the scheduler takes it (kohya's rule)."""
    params = inspect.signature(scheduler.step).parameters
    return {k: v for k, v in (("generator", generator), ("eta", 0.0)) if k in params}


def check_sampler_dependencies(names) -> None:
    """Raise a one-line :class:`UserError` when a sampler in ``names`` needs a package that is missing.

    ``lms`` / ``k_lms`` (``LMSDiscreteScheduler``) integrate with scipy.
    """
    needs_scipy = sorted({n.lower() for n in names if n} & {"lms", "k_lms"})
    if not needs_scipy:
        return
    try:
        importlib.import_module("scipy")  # LMSDiscreteScheduler integrates with scipy.integrate
        importlib.import_module("scipy.integrate")
    except ImportError:
        raise UserError(f"--sample_sampler {needs_scipy[0]}: the LMS sampler needs scipy: pip install scipy, "
                        "or choose another sampler") from None
