"""The README's worked example runs as written on the sample dataset (tiny SDXL model, tiny tagger).

The block between the ``worked-example`` markers is read line by line: ``NAME=value`` lines set
variables (the test overrides the sizes and the model), ``cat > FILE <<EOF`` writes a file with the
variables expanded, every other line is a console script of ``pyproject.toml`` run in-process.
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import tomllib
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = {"RES": "64", "MIN_BUCKET": "64", "MAX_BUCKET": "128", "PRECISION": "no", "STEPS": "2"}


def _script_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- worked-example:begin -->")[1].split("<!-- worked-example:end -->")[0]
    body = block.strip().removeprefix("```bash").removesuffix("```")
    return body.replace("\\\n", " ").splitlines()


def _expand(text: str, env: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], text)


def _entry_points() -> dict:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    return {name: target.split(":") for name, target in scripts.items()}


def run_readme_block(env: dict) -> list[str]:
    """Run the worked example in the current folder; returns the commands run."""
    entry, lines, ran = _entry_points(), iter(_script_lines()), []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"(\w+)=(\S+)", line)
        heredoc = re.fullmatch(r"cat > (\S+) <<EOF", line)
        if assignment:
            env.setdefault(assignment.group(1), assignment.group(2))
        elif heredoc:
            body = []
            for inner in lines:
                if inner == "EOF":
                    break
                body.append(_expand(inner, env))
            Path(heredoc.group(1)).write_text("\n".join(body) + "\n", encoding="utf-8")
        else:
            argv = shlex.split(_expand(line, env))
            module, func = entry[argv[0]]
            code = getattr(importlib.import_module(module), func)(argv[1:])
            assert code == 0, f"{argv[0]} exited {code}"
            ran.append(argv[0])
    return ran


def test_readme_worked_example_end_to_end(kit, tmp_path, monkeypatch):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    make_sample_dataset(tmp_path / "sample")
    photos = tmp_path / "photos"
    photos.mkdir()
    for png in sorted((tmp_path / "sample").rglob("*.png")):
        shutil.copy(png, photos / png.name)
    kit.write_tiny_tagger(tmp_path / "wd14_tagger_model" / "SmilingWolf_wd-vit-tagger-v3")
    model = make_tiny_checkpoint("sdxl", tmp_path / "tiny_sdxl.safetensors")
    monkeypatch.chdir(tmp_path)
    ran = run_readme_block({**OVERRIDES, "MODEL": str(model)})
    assert ran == ["prepare_images", "tag_images_by_wd14_tagger", "edit_captions", "sdxl_train_network"]
    images = sorted((tmp_path / "train" / "10_sks woman").glob("*.png"))
    assert len(images) == 8 and (tmp_path / "train" / "10_sks woman_crop_boxes.png").is_file()
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in images]
    assert all(c.startswith("sks, ") and "_" not in c.replace("^_^", "") for c in captions)
    occurrences = (tmp_path / "tag_occurrence.txt").read_text(encoding="utf-8").splitlines()
    assert "sks 8" in occurrences and all(re.fullmatch(r".+ \d+", line) for line in occurrences)
    with safe_open(str(tmp_path / "output" / "sks_woman.safetensors"), "pt") as f:
        assert any(k.startswith("lora_unet_") for k in f.keys())
        assert '"10_sks woman"' in f.metadata()["ss_tag_frequency"]
