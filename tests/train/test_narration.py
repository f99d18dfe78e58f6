"""What a run says: the plan's numbers are the run's, one narration line per event, and the end summary
lists exactly the files on disk (through the real SDXL entry point, tiny model)."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from library.io.safetensors_io import read_header
from library.lora.file import read_lora
from library.report.sources import read_scalars
from sd_train.sdxl_train_network import main as sdxl_main

EPOCHS = 3


def _toml(sample_toml, path):
    """8 images × 1 repeat, batch 2, 64 px buckets; a quarter held out for validation."""
    image_dir = next(p for p in sample_toml.parent.iterdir() if p.is_dir())
    path.write_text('[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 2\nenable_bucket = true\n'
                    'min_bucket_reso = 64\nmax_bucket_reso = 128\nvalidation_split = 0.25\n\n'
                    f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{image_dir.as_posix()}"\n'
                    'class_tokens = "sks shape"\n')
    return path


def _train(assets, root, *extra) -> tuple[int, str, str]:
    ckpt, sample_toml = assets
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle --w 64 --h 64 --d 3 --s 3\n", encoding="utf-8")
    args = ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(_toml(sample_toml, root / "d.toml")),
            "--output_dir", str(root / "out"), "--output_name", "n", "--network_module", "networks.lora",
            "--network_dim", "4", "--max_data_loader_n_workers", "0", "--seed", "3", "--learning_rate", "1e-3",
            "--network_train_unet_only", "--gradient_accumulation_steps", "2", "--logging_dir", str(root / "logs"),
            "--sample_prompts", str(prompts), *extra]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = sdxl_main(args)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    """A 3-epoch run that saves every epoch (keeping one), samples every epoch and validates every epoch."""
    root = tmp_path_factory.mktemp("narrated")
    code, out, err = _train(assets, root, "--max_train_epochs", str(EPOCHS), "--save_every_n_epochs", "1",
                            "--save_last_n_epochs", "1", "--sample_every_n_epochs", "1", "--lr_scheduler", "cosine",
                            "--lr_warmup_steps", "2")
    assert code == 0, err
    return root / "out", out, err, read_scalars(root / "logs")


def test_plan_numbers_are_the_runs(run, plan_numbers):
    out_dir, out, _, scalars = run
    per_epoch, epochs, total = plan_numbers(out)
    assert epochs == EPOCHS and total == EPOCHS * per_epoch
    final = read_header(out_dir / "n.safetensors")[1]
    assert (int(final["ss_steps"]), int(final["ss_epoch"])) == (total, epochs)
    assert int(read_header(out_dir / "n-000002.safetensors")[1]["ss_steps"]) == 2 * per_epoch
    assert [s for s, _ in scalars["loss/epoch_average"]] == list(range(1, epochs + 1))
    assert max(s for s, _ in scalars["loss/current"]) == total
    record = json.loads((out_dir / "n_run.json").read_text())
    assert (record["status"], record["steps_done"], len(record["epochs"])) == ("finished", total, epochs)
    assert abs(record["plan"]["estimated_file_bytes"] / (out_dir / "n.safetensors").stat().st_size - 1) < 0.03


def test_every_event_has_its_line(run, plan_numbers):
    out_dir, out, err, scalars = run
    per_epoch = plan_numbers(out)[0]
    modules = len(read_lora(out_dir / "n.safetensors").modules)
    assert f"sd_train.narration: network: {modules} modules, " in err
    for epoch, mean in scalars["loss/epoch_average"]:
        assert f"epoch {epoch}/{EPOCHS}: {per_epoch} optimizer steps" in err
        assert f"epoch {epoch}/{EPOCHS} done: mean loss {mean:.4f}, " in err
    for epoch, value in scalars["loss/validation/epoch_average"]:
        assert f"validation loss at epoch {epoch}: {value:.4f}" in err
    assert re.search(rf"saved {re.escape(str(out_dir / 'n-000001.safetensors'))} \(\d+\.\d kB\)", err)
    assert f"removed {out_dir / 'n-000001.safetensors'} (older than --save_last_n_* keeps)" in err
    samples = sorted((out_dir / "sample").glob("*.png"))
    assert len(samples) == EPOCHS and all(f"sample written: {p}" in err for p in samples)
    for name in ("n_dataset_report.json", "n_run.json", "n_report.html"):
        assert len(re.findall(rf"wrote {re.escape(str(out_dir / name))} \(\d+\.\d kB\)", err)) == 1
    assert re.search(r"ETA: \d+ steps × \d+\.\d\d s \+ \d saves × [\d.]+ s \+ \d sample images × [\d.]+ s = ", err)


def test_summary_lists_exactly_the_files_on_disk(run, summary_rows):
    out_dir, out, _, _ = run
    listed = summary_rows(out)
    on_disk = {str(p) for p in out_dir.rglob("*") if p.is_file()}
    assert set(listed) == on_disk
    for name in ("n.safetensors", "n-000002.safetensors"):
        meta = read_header(out_dir / name)[1]
        assert listed[str(out_dir / name)].endswith(f"A1111 hash {meta['sshs_model_hash'][:12]}")
    assert "trigger words: sks shape" in out
    assert f"<lora:n:1>" in out and f"resize_lora --model {out_dir / 'n.safetensors'} --new_rank 2" in out
    assert re.search(r"trained +(\d+) of \1 optimizer steps, 3 of 3 epochs in ", out)


def test_report_is_written_with_its_sections(run):
    out_dir, _, _, _ = run
    html = (out_dir / "n_report.html").read_text()
    for element in ('id="loss-chart"', 'id="lr-chart"', 'id="sample-grid"', 'id="block-norms"', 'id="plan"'):
        assert element in html
    assert html.count('<img src="data:image/png;base64,') == EPOCHS
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', "") and "<script" not in html  # nothing to fetch, no code


def test_quiet_keeps_the_plan_warnings_and_summary(assets, tmp_path):
    code, out, err = _train(assets, tmp_path, "--max_train_steps", "2", "--quiet")
    assert code == 0
    assert "plan:" in out and "summary:" in out
    assert "sd_train.narration" not in err


def _run_entry(main, assets, out, *extra) -> tuple[int, str]:
    ckpt, toml = assets
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir",
                     str(out), "--max_train_steps", "2", "--save_every_n_steps", "1", "--max_data_loader_n_workers",
                     "0", "--learning_rate", "1e-3", *extra])
    return code, stdout.getvalue()


def test_textual_inversion_plan_and_summary(assets, tmp_path, summary_rows):
    """The plan names the embedding, the summary its files (whole-file hash, as A1111 shows embeddings) and
    how embeddings are used."""
    import hashlib

    from sd_train.sdxl_train_textual_inversion import main

    code, out = _run_entry(main, assets, tmp_path / "o", "--token_string", "mytok", "--num_vectors_per_token", "2")
    assert code == 0
    assert "textual inversion: 2 vector(s) for 'mytok'; only these new token embeddings train" in out
    rows = summary_rows(out)
    assert set(rows) == {str(p) for p in (tmp_path / "o").rglob("*") if p.is_file()}
    pt = tmp_path / "o" / "mytok.pt"
    assert rows[str(pt)].endswith(f"A1111 hash {hashlib.sha256(pt.read_bytes()).hexdigest()[:12]}")
    assert "write embedding:mytok in the prompt" in out and "<lora:" not in out


def test_pivotal_embeddings_are_listed_beside_their_lora(assets, tmp_path, summary_rows):
    code, out = _run_entry(sdxl_main, assets, tmp_path / "o", "--network_module", "networks.lora",
                           "--token_abstraction", "TOK", "--train_text_encoder_ti")
    assert code == 0
    rows = summary_rows(out)
    assert set(rows) == {str(p) for p in (tmp_path / "o").rglob("*") if p.is_file()}
    assert {"last_emb.safetensors", "at-step00000001_emb.safetensors"} <= {p.rsplit("/", 1)[1] for p in rows}
    assert "copy last_emb.safetensors into embeddings/ (with the LoRA loaded) and write last_emb" in out


def test_a_bookkeeping_write_that_fails_is_a_warning(tmp_path, caplog):
    """A full or blocked output folder costs the run record a warning, never the run."""
    import logging

    from sd_train.narration import Narrator

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    narrator = Narrator.__new__(Narrator)  # only the output folder matters here
    narrator.out = blocked / "out"
    with caplog.at_level(logging.WARNING):
        narrator.write_json("n_run.json", {"status": "running"})
    assert f"{blocked / 'out' / 'n_run.json'} not written (" in caplog.text and "training goes on" in caplog.text
