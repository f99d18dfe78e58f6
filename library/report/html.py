"""The run report as one self-contained HTML page: inline SVG charts, images as data URIs, no script."""

from __future__ import annotations

import base64
import io
from collections import Counter
from html import escape
from pathlib import Path

from library.report import charts
from library.report.sources import RunFiles
from library.report.units import duration, human_size

THUMB = 320  # px: larger sample images are embedded as JPEG thumbnails of this size
TOP_TAGS = 50
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666}.facts{display:flex;flex-wrap:wrap;gap:8px 24px;margin:12px 0}.facts b{display:block;font-size:18px}
table{border-collapse:collapse}td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:12px}
.grid td,.grid th{padding:4px;text-align:center;font-weight:normal;font-size:12px}
.grid img{width:128px;height:auto;image-rendering:auto;display:block;border:1px solid #ccc}
.grid img.small{image-rendering:pixelated}.muted{color:#888}.warn{color:#a15c00}
svg{max-width:100%;height:auto}.scroll{overflow-x:auto}
.grid th.prompt{text-align:right;max-width:180px}
"""


def _image_uri(path: Path) -> tuple[str, bool]:
    """``(data URI, is small)``: small PNGs as they are, larger images as JPEG thumbnails."""
    from PIL import Image

    with Image.open(path) as img:
        if max(img.size) <= THUMB and path.suffix.lower() == ".png":
            return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), max(img.size) < 128
        thumb = img.convert("RGB")
        thumb.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        thumb.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), False


def _facts(files: RunFiles) -> str:
    r, t, m = files.record, files.record.get("timing", {}), files.record.get("memory", {})
    plan = r.get("plan", {})
    items = [("status", r.get("status", "no run record")),
             ("steps", f"{r.get('steps_done', '?')} / {plan.get('max_train_steps', '?')}"),
             ("epochs", f"{len(r.get('epochs', []))} / {plan.get('num_epochs', '?')}")]
    if t:
        items += [("time", duration(t.get("elapsed_seconds", 0))), ("median step", f"{t['median_step_seconds']:.2f} s")]
    if m.get("peak_rss_bytes"):
        items.append(("peak RSS", human_size(m["peak_rss_bytes"])))
    if m.get("peak_vram_bytes"):
        items.append(("peak VRAM", human_size(m["peak_vram_bytes"])))
    loss = r.get("loss") or {}
    if loss.get("count"):
        items.append(("mean loss", f"{loss['sum'] / loss['count']:.4f}"))
    cells = "".join(f"<div>{escape(k)}<b>{escape(str(v))}</b></div>" for k, v in items)
    return f'<div class="facts" id="facts">{cells}</div>'


def _loss_section(files: RunFiles) -> str:
    s, per_epoch = files.scalars, files.record.get("plan", {}).get("steps_per_epoch") or 1
    at_step = [(e * per_epoch, v) for e, v in s.get("loss/validation/epoch_average", [])]
    validation = sorted(s.get("loss/validation/step_average", []) + at_step)
    means = [(e * per_epoch, v) for e, v in s.get("loss/epoch_average", [])]
    if not s.get("loss/current") and not means:  # no TensorBoard events: the epoch means of the run record
        means = [(e["epoch"] * per_epoch, e["mean_loss"]) for e in files.record.get("epochs", [])]
    if not (s.get("loss/current") or means):
        return '<p class="muted" id="loss-missing">No loss values yet (TensorBoard logs come with --logging_dir).</p>'
    return charts.loss_chart(s.get("loss/current", []), s.get("loss/average", []), validation, means)


def _lr_section(files: RunFiles) -> str:
    groups = {tag[3:]: points for tag, points in files.scalars.items() if tag.startswith("lr/") and points}
    if not groups:
        return '<p class="muted" id="lr-missing">No learning-rate values (TensorBoard logs come with --logging_dir).</p>'
    return charts.lr_chart(groups)


def _when(step: int, epoch: int | None) -> str:
    if epoch is not None:
        return f"epoch {epoch}<br>step {step}"
    return "before training" if step == 0 else f"step {step}"


def _samples_section(files: RunFiles) -> str:
    """One row per prompt, one column per time the samples were made (left to right)."""
    if not files.samples:
        return '<p class="muted">No sample images (--sample_prompts with --sample_every_n_epochs / _steps).</p>'
    times = sorted({(s.step or 0, -1 if s.epoch is None else s.epoch) for s in files.samples})
    cells = {(s.index, s.step or 0, -1 if s.epoch is None else s.epoch): s for s in files.samples}
    prompts: dict[int, str] = {}
    for s in files.samples:
        prompts.setdefault(s.index, s.prompt)
    head = "".join(f"<th>{_when(step, None if epoch < 0 else epoch)}</th>" for step, epoch in times)
    rows = []
    for index in sorted(prompts):
        tds = []
        for step, epoch in times:
            sample = cells.get((index, step, epoch))
            if sample is None:
                tds.append("<td></td>")
                continue
            uri, small = _image_uri(sample.path)
            link = escape(sample.path.relative_to(files.out).as_posix())
            tds.append(f'<td><a href="{link}"><img src="{uri}" class="{"small" if small else ""}" '
                       f'alt="{escape(sample.prompt)}" title="{escape(sample.prompt)}"></a></td>')
        label = escape(prompts[index] or f"prompt {index}")
        rows.append(f'<tr><th class="prompt">{label}</th>{"".join(tds)}</tr>')
    return (f'<div class="scroll"><table class="grid" id="sample-grid"><tr><th></th>{head}</tr>'
            f'{"".join(rows)}</table></div>')


def _dataset_section(dataset: dict) -> str:
    if not dataset:
        return '<p class="muted">No dataset report found.</p>'
    parts = [f"<p>{dataset.get('num_train_images', '?')} training samples (images × repeats), "
             f"{dataset.get('num_reg_images', 0)} regularization, {dataset.get('num_validation_images', 0)} "
             f"validation images; {dataset.get('batches_per_epoch', '?')} batches per epoch.</p>"]
    for d in dataset.get("datasets", []):
        labels = [f"{b['resolution'][0]}×{b['resolution'][1]}" for b in d["buckets"]]
        counts = [b["count"] for b in d["buckets"]]
        parts.append(f"<h3>dataset {d['index']}: buckets</h3>")
        parts.append(charts.bar_chart(labels, counts, f"buckets-{d['index']}", "samples"))
    tags: Counter = Counter()
    for freq in (dataset.get("tag_frequency") or {}).values():
        tags.update(freq)
    if tags:
        rows = "".join(f"<tr><td>{escape(t)}</td><td>{n}</td></tr>" for t, n in tags.most_common(TOP_TAGS))
        parts.append(f'<h3>caption tags (top {TOP_TAGS})</h3><table id="tags">{rows}</table>')
    warnings = dataset.get("warnings") or []
    parts += [f'<p class="warn">warning: {escape(w)}</p>' for w in warnings]
    return "".join(parts)


def _lora_section(summary: dict | None) -> str:
    if summary is None:
        return '<p class="muted">No LoRA file saved yet.</p>'
    meta = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in summary["metadata"].items())
    blocks = summary["blocks"]
    chart = charts.bar_chart([b[0] for b in blocks], [b[1] for b in blocks], "block-norms", "‖ΔW‖ (Frobenius)")
    return (f"<p>{escape(Path(summary['path']).name)}: {human_size(summary['bytes'])}, {summary['modules']} modules, "
            f"rank {', '.join(map(str, summary['ranks']))}</p><table id='lora-metadata'>{meta}</table>"
            f"<h3>Which blocks learned most</h3>{chart}")


def render(files: RunFiles, lora: dict | None) -> str:
    """The whole page for one run."""
    r = files.record
    plan = "\n".join(r.get("plan", {}).get("lines", [])) or "(no run record: the plan is printed at the start of a run)"
    written = "".join(f"<li>{escape(f['path'])} <span class='muted'>({escape(f['kind'])}"
                      f"{'' if (files.out / f['path']).exists() else ', removed since'})</span></li>"
                      for f in r.get("files", []))
    events = [f"validation loss at {v['kind']} {v['at']}: {v['loss']:.4f}" for v in r.get("validation", [])]
    events += [f"skipped non-finite step {n['step']}: {n['batch']}" for n in r.get("nan_skips", [])]
    event_html = "".join(f"<li>{escape(e)}</li>" for e in events) or "<li class='muted'>none</li>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(files.name)} · sd-train run report</title><style>{CSS}</style></head><body>
<h1>{escape(files.name)}</h1><div class="meta">sd-train run report · {escape(str(files.out))} ·
started {escape(r.get('started', '?'))} · updated {escape(r.get('updated', '?'))}</div>
{_facts(files)}
<h2>Loss</h2>{_loss_section(files)}
<h2>Learning rate</h2>{_lr_section(files)}
<h2>Samples</h2>{_samples_section(files)}
<h2>Plan</h2><pre id="plan">{escape(plan)}</pre>
<h2>Dataset</h2>{_dataset_section(files.dataset)}
<h2>LoRA</h2>{_lora_section(lora)}
<h2>Files written</h2><ul id="files">{written or "<li class='muted'>none yet</li>"}</ul>
<h2>Events</h2><ul id="events">{event_html}</ul>
</body></html>
"""
