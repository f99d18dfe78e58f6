"""Sample-prompt parsing and scheduler choice of sd_train.sampling (CLI.md §11, TRAINING.md §13)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from library.errors import UserError
from sd_train.families.sd import SdFamily
from sd_train.families.sdxl import SdxlFamily
from sd_train.sampling import SamplePrompt, load_prompts, make_scheduler, parse_prompt_line, sampler_for


def test_txt_line_codes_and_clamps():
    p = parse_prompt_line("a dog on a beach --n lowres, blurry --w 1023 --h 30 --d 42 --l 6 --s 5000 --ss euler_a "
                          "--zz 9 --w notanumber")
    assert p == SamplePrompt("a dog on a beach", negative_prompt="lowres, blurry", width=1016, height=64, seed=42,
                             sample_steps=1000, scale=6.0, sample_sampler="euler_a")


def test_txt_json_toml_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# skipped\n\nfirst --d 1\nsecond\n")
    assert [p.prompt for p in load_prompts(str(txt))] == ["first", "second"]
    js = tmp_path / "p.json"
    js.write_text('[{"prompt": "a", "width": 256}, "b --h 128"]')
    assert [(p.prompt, p.width, p.height) for p in load_prompts(str(js))] == [("a", 256, 512), ("b", 512, 128)]
    toml = tmp_path / "p.toml"
    toml.write_text('[prompt]\nwidth = 320\nscale = 5.0\n[[prompt.subset]]\nprompt = "x"\n'
                    '[[prompt.subset]]\nprompt = "y"\nwidth = 640\n')
    assert [(p.prompt, p.width, p.scale) for p in load_prompts(str(toml))] == [("x", 320, 5.0), ("y", 640, 5.0)]


def test_scheduler_names_and_prediction_type():
    assert type(make_scheduler("k_euler", False)).__name__ == "EulerDiscreteScheduler"
    assert type(make_scheduler("unknown", False)).__name__ == "DDIMScheduler"
    v = make_scheduler("dpmsolver++", True)
    assert v.config.prediction_type == "v_prediction" and v.config.algorithm_type == "dpmsolver++"
    assert make_scheduler(None, False).config.beta_schedule == "scaled_linear"


def test_sampler_defaults_to_euler_a_for_sdxl_and_ddim_for_sd():
    plain, own = SamplePrompt(prompt="a"), SamplePrompt(prompt="a", sample_sampler="heun")
    assert sampler_for(plain, None, SdxlFamily()) == "euler_a"
    assert sampler_for(plain, None, SdFamily()) == "ddim"
    assert sampler_for(plain, "dpmsolver++", SdxlFamily()) == "dpmsolver++"
    assert sampler_for(own, "dpmsolver++", SdFamily()) == "heun"
    assert type(make_scheduler(sampler_for(plain, None, SdxlFamily()), False)).__name__ == \
        "EulerAncestralDiscreteScheduler"


@pytest.mark.parametrize("name, text, reason", [
    ("p.json", '[{"prompt": "a",', "JSONDecodeError: Expecting"),
    ("p.toml", 'prompt = "a"\n', "ValueError: no [prompt] table"),
    ("p.toml", "[other]\nx = 1\n", "ValueError: no [prompt] table"),
    ("p.json", '[{"prompt": "a", "width": "wide"}]', "TypeError: "),
])
def test_malformed_prompt_files_are_one_line(tmp_path, name, text, reason):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_prompts(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read the sample prompts ({reason}")
    assert message.endswith("see CLI.md §11 for the .txt/.json/.toml formats") and "\n" not in message


def test_unknown_prompt_keys_are_ignored_like_kohya(tmp_path, caplog):
    path = tmp_path / "p.json"
    path.write_text('[{"prompt": "a", "controlnet_image": "c.png", "enum": 3}]')
    with caplog.at_level(logging.WARNING):
        assert load_prompts(str(path), warn=True) == [SamplePrompt("a")]
    assert f"{path}: ignored unknown prompt keys: controlnet_image, enum" in caplog.text


def test_missing_prompt_file_fails_before_models_load(assets, tmp_path, capsys, monkeypatch):
    import library.checkpoint.io as cio
    from sd_train.sdxl_train_network import main as sdxl_main

    monkeypatch.setattr(cio, "load_models", lambda *a, **k: pytest.fail("models were loaded"))
    ckpt, toml = assets
    code = sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                      "--output_dir", str(tmp_path / "o"), "--network_module", "networks.lora",
                      "--sample_prompts", str(tmp_path / "nofile.txt"), "--max_data_loader_n_workers", "0"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nofile.txt'}: sample prompt file not found; fix --sample_prompts")


def test_prompt_file_broken_mid_run_skips_those_samples(tmp_path, caplog):
    from sd_train.sampling import sample_during_training

    opts = SimpleNamespace(saving=SimpleNamespace(output_dir=str(tmp_path), output_name="x"),
                           sampling=SimpleNamespace(sample_prompts=str(tmp_path / "gone.txt"), sample_sampler=None))
    with caplog.at_level(logging.WARNING):
        assert sample_during_training(SimpleNamespace(opts=opts), epoch=None, step=3) == []
    assert "gone.txt: sample prompt file not found; fix --sample_prompts; no samples this time" in caplog.text
