"""The quickstart as a user sees it: the plan, the narration and the end summary in the terminal, and the
run report rendered by a real (headless) browser, offline.

``SD_TRAIN_SCREENSHOT=PATH`` also saves a full-page screenshot of the report there (``docs/run_report.png``
was made that way).
"""

from __future__ import annotations

import io
import os

from library.io.safetensors_io import read_header
from library.report.sources import read_scalars

INPUTS = ("sample_prompts.txt", "before_after.png")  # the quickstart's own files, not the run's


def test_terminal_shows_plan_narration_and_summary(quickstart, plan_numbers, summary_rows):
    out_dir, out, err = quickstart
    per_epoch, epochs, total = plan_numbers(out)
    meta = read_header(out_dir / "quickstart_lora.safetensors")[1]
    assert int(meta["ss_steps"]) == total == 8 and int(meta["ss_epoch"]) == epochs == 1
    assert max(step for step, _ in read_scalars(out_dir / "logs")["loss/current"]) == total
    assert f"epoch 1/1: {min(per_epoch, total)} optimizer steps" in err and "ETA: " in err
    samples = sorted((out_dir / "sample").glob("*.png"))
    assert len(samples) == 2 * (1 + total // 2)  # two prompts, before training and every 2 steps
    assert all(f"sample written: {p}" in err for p in samples)
    assert f"saved {out_dir / 'quickstart_lora-step00000004.safetensors'} (" in err
    listed = set(summary_rows(out))
    run_files = {str(p) for p in out_dir.rglob("*") if p.is_file()
                 and p.name not in INPUTS and not p.relative_to(out_dir).parts[0] in ("dataset", "logs")}
    assert listed == run_files
    assert "A1111 / Forge: copy it into models/Lora/ and write <lora:quickstart_lora:1> in the prompt" in out
    assert "trigger words: sks\n" in out  # the concept subset's class token, which every caption carries
    assert f"run report: {out_dir / 'quickstart_lora_report.html'}" in out


def _png_size_and_colours(data: bytes) -> tuple[tuple[int, int], int, float]:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    white = sum(n for n, c in colours if c == (255, 255, 255)) / (image.width * image.height)
    return image.size, len(colours), white


PAGE_STATE = """
const images = [...document.querySelectorAll('#sample-grid img')];
const chart = id => {
  const svg = document.getElementById(id);
  if (!svg || svg.tagName.toLowerCase() !== 'svg') return {width: 0, text: '', paths: 0};
  return {width: svg.getBoundingClientRect().width, text: svg.textContent, paths: svg.querySelectorAll('path').length};
};
return {images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
        loss: chart('loss-chart'), lr: chart('lr-chart'), viewport: [window.innerWidth, window.innerHeight],
        height: document.documentElement.scrollHeight,
        fetched: performance.getEntriesByType('resource').map(e => e.name)};
"""


def test_report_renders_in_headless_chromium(browser, quickstart):  # no browser: skip before the run
    out_dir = quickstart[0]
    browser.get((out_dir / "quickstart_lora_report.html").as_uri())  # the browser is offline
    state = browser.execute_script(PAGE_STATE)
    samples = list((out_dir / "sample").glob("*.png"))
    assert state["images"] == state["loaded"] == len(samples) > 0
    assert state["loss"]["width"] > 400 and "loss per step" in state["loss"]["text"] and state["loss"]["paths"] > 10
    assert state["lr"]["width"] > 400 and "unet" in state["lr"]["text"] and "learning rate" in state["lr"]["text"]
    assert all(url.startswith("data:") for url in state["fetched"])  # nothing outside the file
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    size, colours, white = _png_size_and_colours(browser.get_screenshot_as_png())
    assert size == tuple(state["viewport"]) and size[0] == 1280
    assert colours > 50 and white < 0.97  # text, charts and images, not a blank page
    if os.environ.get("SD_TRAIN_SCREENSHOT"):
        browser.set_window_size(1280, state["height"] + 120)
        browser.save_screenshot(os.environ["SD_TRAIN_SCREENSHOT"])
