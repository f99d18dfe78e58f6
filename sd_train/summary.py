"""The end summary: what the run wrote (size and the hash A1111 shows), how long it took, how to use it."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from library.report.units import duration, human_size, sized
from sd_train.plan_format import labelled

TRIGGER_TAGS = 5


def a1111_hash(path: str | os.PathLike, lora: bool = True) -> str:
    """The 12-hex short hash A1111 shows: for a ``.safetensors`` LoRA the SHA-256 of its data section (the
    addnet hash, = ``sshs_model_hash``); for other LoRA files and for embeddings, of the whole file."""
    from library.io.safetensors_io import data_section_sha256, file_model_hashes

    if lora and str(path).endswith(".safetensors"):
        return data_section_sha256(path)[:12]
    return file_model_hashes(path)[1][:12]


def trigger_words(report: dict) -> list[str]:
    """Class tokens of the training subsets, then the caption tags found in at least half of the training
    images (most frequent first), at most :data:`TRIGGER_TAGS` of those."""
    words: list[str] = []
    images: Counter = Counter()
    for d in report.get("datasets", []):
        for s in d["subsets"]:
            if s.get("is_reg"):
                continue
            folder = s["metadata_file"] if s.get("kind") == "FT" else s["image_dir"]  # ss_tag_frequency's keys
            images[os.path.basename(folder or "")] += s["img_count"]
            if s.get("class_tokens") and s["class_tokens"] not in words:
                words.append(s["class_tokens"])
    counts: Counter = Counter()
    for folder, tags in (report.get("tag_frequency") or {}).items():
        if folder in images:
            counts.update(tags)
    common = [t for t, n in counts.most_common() if 2 * n >= sum(images.values()) and t not in words]
    return words + common[:TRIGGER_TAGS]


def written_files(record: dict, out: Path) -> list[tuple[Path, str]]:
    """``(path, kind)`` of everything the run wrote that is still on disk, in the order written."""
    entries = [(out / f["path"], f["kind"]) for f in record["files"]]
    entries += [(out / s["path"], "sample") for s in record["samples"]]
    name = record["output_name"]
    entries += [(out / f"{name}_run.json", "run record"), (out / f"{name}_report.html", "run report")]
    seen, kept = set(), []
    for path, kind in entries:
        if path.exists() and path not in seen:
            seen.add(path)
            kept.append((path, kind))
    return kept


def _file_line(path: Path, kind: str, embeddings_only: bool) -> str:
    size = sized(path)
    if kind in ("model", "embedding"):
        return f"{path}  {size}  A1111 hash {a1111_hash(path, lora=kind == 'model' and not embeddings_only)}"
    if kind == "run report":
        return f"{path}  {size}  (open it in a browser)"
    return f"{path}  {size}" + ("  (state folder)" if path.is_dir() else "")


def _embedding_usage(emb: Path, beside: str = "") -> list[str]:
    return [f"A1111 / Forge: copy {emb.name} into embeddings/{beside} and write {emb.stem} in the prompt",
            f"ComfyUI: copy it into ComfyUI/models/embeddings/ and write embedding:{emb.stem} in the prompt"]


def _usage(final: Path, record: dict, opts, embedding: Path | None) -> list[str]:
    stem, base = final.stem, opts.model.pretrained_model_name_or_path or "BASE.safetensors"
    words = ", ".join(record.get("trigger_words") or []) or "none found (captions carry no repeated tag)"
    if record["plan"].get("embeddings_only"):  # textual inversion: the file is an embedding
        return _embedding_usage(final) + [f"trigger word: {final.stem} (the embedding's name)"]
    rank = max(1, (opts.network.network_dim or 4) // 2)
    emb = _embedding_usage(embedding, " (with the LoRA loaded)") if embedding else []
    return [f"ComfyUI: copy {final.name} into ComfyUI/models/loras/ and load it with a LoraLoader node",
            f"A1111 / Forge: copy it into models/Lora/ and write <lora:{stem}:1> in the prompt", *emb,
            f"trigger words: {words}",
            f"smaller file: resize_lora --model {final} --new_rank {rank} --save_to "
            f"{final.with_name(f'{stem}-r{rank}{final.suffix}')}",
            f"bake into the base model: merge_lora --sd_model {base} --models {final} --ratios 1 --save_to "
            f"{final.with_name(f'{stem}-merged.safetensors')}"]


def summary_lines(record: dict, out: Path, opts) -> list[str]:
    """The lines printed at the end of a run (see the module docstring)."""
    t, loss, plan = record["timing"], record["loss"], record["plan"]
    epochs = record["epochs"]
    trained = (f"{record['steps_done']} of {plan['max_train_steps']} optimizer steps, {len(epochs)} of "
               f"{plan['num_epochs']} epochs in {duration(t.get('elapsed_seconds', 0.0))} "
               f"(median step {t.get('median_step_seconds', 0.0):.2f} s)")
    rows = [("trained", trained)]
    if loss["count"]:
        last = f"last epoch mean {epochs[-1]['mean_loss']:.4f}, " if epochs else ""
        rows.append(("loss", f"{last}run mean {loss['sum'] / loss['count']:.4f}, final step {loss['last']:.4f}"))
    if record["nan_skips"]:
        rows.append(("skipped", f"{len(record['nan_skips'])} non-finite step(s)"))
    memory = record["memory"]
    vram = f", peak VRAM {human_size(memory['peak_vram_bytes'])}" if "peak_vram_bytes" in memory else ""
    rows.append(("memory", f"peak RSS {human_size(memory.get('peak_rss_bytes'))}{vram}"))
    files = written_files(record, out)
    rows += [("wrote", _file_line(path, kind, plan.get("embeddings_only", False))) for path, kind in files]
    if record.get("log_dir"):
        rows.append(("logs", f"{record['log_dir']}; tensorboard --logdir {opts.logging.logging_dir}"))
    models = [path for path, kind in files if kind == "model"]
    if models:
        from sd_train.checkpointing import embedding_file

        emb = embedding_file(models[-1])
        rows += [("use it", line) for line in _usage(models[-1], record, opts, emb if emb.is_file() else None)]
    return ["summary:"] + labelled(rows)
