"""Sample-prompt parsing and scheduler choice of sd_train.sampling (CLI.md §11, TRAINING.md §13)."""

from __future__ import annotations

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
