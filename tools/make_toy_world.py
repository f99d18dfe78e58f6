"""The toy world: rebuild its tiny base models from scratch, or write the held-out concept's LoRA dataset.

``models``: trains one tiny VAE, then a tiny SDXL (``--families``: also SD1.5, SD2) UNet with its text
encoders on 64 px pictures of circles, squares and triangles in red, blue and yellow on white or black,
never green. The checkpoints are real single files with the tiny architectures of ``make_tiny_model`` (same key
layouts), stored in fp16, and listed with their sha256 in ``OUT_DIR/README.md``. The committed copies
live in ``assets/toy/``; tests and the quickstart only read them.

``dataset``: writes green pictures captioned with the trigger word (``a sks circle on a white background``)
into ``OUT_DIR/10_sks/`` and a dataset TOML, to teach the held-out colour with a LoRA.

Usage:
  ``python -m tools.make_toy_world models assets/toy [--families sdxl] [--seed 0]``
  ``python -m tools.make_toy_world dataset OUT_DIR [--images 12] [--seed 0]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping OpenMP waits: on a busy machine, spinning waits
import torch  # noqa: E402  # made the 2-thread rebuild 6x slower (same numbers either way)

from library.errors import UserError, run_cli  # noqa: E402
from library.io.safetensors_io import file_model_hashes  # noqa: E402
from library.models.families import TINY_ARCHS  # noqa: E402
from library.toyworld import asset_path  # noqa: E402
from library.toyworld.dataset import CONCEPT_DIR, make_concept_dataset  # noqa: E402

DEFAULTS = {"seed": 0, "vae_steps": 2000, "unet_steps": 3000, "threads": 2}


def toy_families(archs) -> list[tuple[str, object, dict, dict]]:
    """``(arch, family spec, configs, extras)`` per requested ``make_tiny_model`` arch, with its tiny
    configs and single-file extras."""
    from tools.make_tiny_model import checkpoint_extras, tiny_configs

    return [(arch, TINY_ARCHS[arch], tiny_configs(arch)[1], checkpoint_extras(TINY_ARCHS[arch].name)) for arch in archs]


def committed_archs() -> list[str]:
    """The architectures whose toy checkpoint is committed in ``assets/toy/``."""
    return [arch for arch in TINY_ARCHS if asset_path(arch).is_file()]


def sha256(path: Path) -> str:
    """Hex sha256 of a whole file (what A1111 shows as the model's full hash)."""
    return file_model_hashes(path)[1]


def write_readme(out_dir: Path, args, report: dict, total: float) -> Path:
    """``OUT_DIR/README.md``: what the files are, the command that made them, seed, timings and sha256."""
    cmd = (f"python -m tools.make_toy_world models {out_dir.as_posix()} --families {' '.join(args.families)} "
           f"--seed {args.seed} --vae_steps {args.vae_steps} --unet_steps {args.unet_steps} --threads {args.threads}")
    rows = [f"| `{r['path'].name}` | {r['path'].stat().st_size / 1e6:.2f} MB | {r['seconds']:.0f} s "
            f"({r['cpu_seconds']:.0f} s CPU) | `{sha256(r['path'])}` |" for r in (report[n] for n in args.families)]
    vae = report["vae"]
    text = README.format(cmd=cmd, seed=args.seed, torch=torch.__version__, rows="\n".join(rows), threads=args.threads,
                         vae=f"{vae['seconds']:.0f} s ({vae['cpu_seconds']:.0f} s CPU)", vae_err=vae["error"],
                         total=total / 60)
    path = out_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


README = """# Toy world base models

Tiny base checkpoints trained from scratch on the toy world (`library/toyworld/`): 64 px pictures of a
circle, square or triangle in red, blue or yellow on a white or black background, captioned
`a red circle on a white background`. The colour **green** (and its word) is held out: the base
models never see it, so a LoRA can be seen and tested to teach it (trigger word `sks`, see
`scripts/quickstart.py` and `tests/learning/`).

Each file is a real single-file checkpoint (LDM/SGM key layout, configs in the `sd_train.model_config`
metadata) with exactly the keys and shapes of the tiny models of `tools/make_tiny_model.py`, stored in
fp16 (the SDXL file's two 49408-row token tables alone are 6.3 MB); the UNets use 8 GroupNorm groups (the
tiny SDXL default of 32 trained about twice as slowly). The VAE was trained on every palette colour, green
included (a real VAE can draw anything); every family built shares it. The text encoders were trained with
the UNet. Sample the models at 64×64 with Euler, about 20 steps, CFG 3.

Made with (seed {seed}, torch {torch}, {threads} threads):

```
{cmd}
```

| file | size | training time (wall, CPU) | sha256 |
|---|---|---|---|
{rows}

VAE: {vae}, reconstruction error {vae_err:.1f} of 255 levels. Whole rebuild: {total:.1f} min wall on
the shared 2-core machine it ran on (its load average varied; the CPU times are the cost). Tests and the
quickstart only read these files and never retrain them.

The same command rebuilds the VAE bit for bit, but not the UNet and text encoders: two rebuilds on one
machine at different loads matched until about step 800 of 3000 and then drifted apart (largest weight
difference 0.17). The hash identifies the committed file. A rebuilt model draws the same world; measure the
learning tests' numbers again on it (`tests/learning/breakages.py`, `benchmarks/convergence.py`).
"""


def setup_parser() -> argparse.ArgumentParser:
    """Command-line options of make_toy_world."""
    parser = argparse.ArgumentParser(description="Rebuild the toy world's base models or write its concept dataset.")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="train the toy base checkpoints from scratch (CPU, about 20 minutes)")
    models.add_argument("out_dir", help="output folder (the committed copies are in assets/toy)")
    models.add_argument("--families", nargs="+", choices=list(TINY_ARCHS), default=committed_archs(),
                        help="which tiny architectures (make_tiny_model --arch names); default: those committed")
    models.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of weights, pictures and noise")
    models.add_argument("--vae_steps", type=int, default=DEFAULTS["vae_steps"], help="VAE training steps")
    models.add_argument("--unet_steps", type=int, default=DEFAULTS["unet_steps"], help="UNet training steps per family")
    models.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch CPU threads (part of the recipe)")
    data = sub.add_parser("dataset", help="write the held-out concept's pictures, captions and dataset TOML")
    data.add_argument("out_dir", help="dataset root; pictures go to OUT_DIR/10_sks/")
    data.add_argument("--images", type=int, default=12, help="number of pictures")
    data.add_argument("--seed", type=int, default=0, help="seed of the picture layout")
    for p in (parser, models, data):
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    if args.command == "dataset":
        if args.images < 1:
            raise UserError(f"--images {args.images}: must be at least 1")
        toml = make_concept_dataset(args.out_dir, args.images, args.seed)
        print(f"wrote {args.images} pictures to {Path(args.out_dir) / CONCEPT_DIR} and {toml}")
        return 0
    from library.toyworld.build import build_all

    if min(args.vae_steps, args.unet_steps, args.threads) < 1:
        raise UserError("--vae_steps, --unet_steps and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = build_all(args.out_dir, toy_families(args.families), args.seed, args.vae_steps, args.unet_steps)
    print(f"wrote {write_readme(Path(args.out_dir), args, report, time.perf_counter() - start)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``make_toy_world models OUT_DIR`` or ``make_toy_world dataset OUT_DIR``."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
