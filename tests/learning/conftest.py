"""Fixtures of the learning tests: the committed toy SDXL model, one concept LoRA trained per test session
(shared by the xdist workers through a lock file) and the base images of the lesson prompts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: toykit lives here


def _trained_once(tmp_path_factory, worker_id, folder: str, **kwargs) -> Path:
    """``train_concept_lora(..., **kwargs)`` once per test session, shared by the xdist workers."""
    from filelock import FileLock

    from sd_train.toy_lesson import train_concept_lora

    if worker_id == "master":  # no xdist: a private folder
        return train_concept_lora(tmp_path_factory.mktemp(folder), **kwargs)
    shared = tmp_path_factory.getbasetemp().parent / folder  # the session's folder above the workers'
    with FileLock(str(shared) + ".lock"):
        path = shared / "toy_sks.safetensors"
        return path if path.is_file() else train_concept_lora(shared, **kwargs)


@pytest.fixture(scope="session")
def toy_lora(tmp_path_factory, worker_id) -> Path:
    """The LoRA of :func:`sd_train.toy_lesson.train_concept_lora` (the quickstart's recipe), trained once, with
    the checkpoint of step ``PIVOTAL_STEPS`` beside it (``toy_sks-step00000060.safetensors``)."""
    from toykit import PIVOTAL_STEPS

    return _trained_once(tmp_path_factory, worker_id, "toy_lora",
                         extra_flags=["--save_every_n_steps", str(PIVOTAL_STEPS)])


@pytest.fixture(scope="session")
def toy_sdxl():
    """``(family, models)`` of the committed toy SDXL checkpoint; tests that patch it must undo the patch."""
    from sd_train.toy_lesson import TOY_SDXL

    return TOY_SDXL.load()


@pytest.fixture(scope="session")
def base_images(toy_sdxl) -> list:
    """The lesson prompts rendered by the toy base model (trigger prompts first, then control prompts)."""
    from sd_train.lora_preview import render
    from sd_train.toy_lesson import lesson_prompts

    return render(*toy_sdxl, lesson_prompts())
