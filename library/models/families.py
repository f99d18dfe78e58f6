"""Model families (SD1, SD2, SDXL) described by data: the one place in ``library`` that knows how they differ.

Everything else looks a family up by the name stored with the models (``family_spec(models.family)``)
and reads its properties: key prefixes of checkpoints and LoRA files, the text encoders and their
tokenizers, the UNet key style, the VAE scale, bucket step, cache file tag, metadata strings and the
diffusers pipeline. ``sd_train.families`` wraps these descriptions in the training strategy objects.
A new family, e.g. an SDXL fine-tune with its own metadata strings, is one more :class:`FamilySpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from library.errors import UserError

SGM_URL = "https://github.com/Stability-AI/generative-models"


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a family, as files, tools and tokenizers name it.

    Attributes:
        component: state-dict component in sd-train (``"te0"``, ``"te1"``).
        checkpoint_prefix: key prefix in single-file checkpoints.
        openclip_keys: single files store it in OpenCLIP's fused layout (``transformer.resblocks…``).
        lora_prefix: kohya LoRA module prefix (``lora_te``, ``lora_te1``, ``lora_te2``).
        diffusers_folder: sub-folder in a diffusers pipeline.
        tokenizer: tokenizer kind (``library.text.conditioning.load_tokenizer``).
        kohya_tokenizer_dirs: kohya-compat: folders kohya saves that tokenizer in under ``--tokenizer_cache_dir``.
        pad_token: its tokenizer's padding token.
        lora_layers: encoder layers a LoRA file may name (the full tower, also for SD2's 23-layer model).
        keeps_logit_scale: the file's ``logit_scale`` is kept aside and written back (else dropped).
        placeholder_last_layer: kohya-compat: built one layer short; files carry a placeholder last layer,
            ``text_projection`` and ``logit_scale`` (SD2).
        embedding_key: key of its rows in an embedding file (``emb_params`` of kohya/A1111 SD1/SD2 files,
            ``clip_l`` / ``clip_g`` of SDXL files).
        bundle_embedding_key: key tail of its rows inside a LoRA file, ``bundle_emb.<name>.<tail>`` (A1111).
    """

    component: str
    checkpoint_prefix: str
    openclip_keys: bool
    lora_prefix: str
    diffusers_folder: str
    tokenizer: str
    kohya_tokenizer_dirs: tuple[str, ...]
    pad_token: str
    lora_layers: int
    keeps_logit_scale: bool = False
    placeholder_last_layer: bool = False
    embedding_key: str = "emb_params"
    bundle_embedding_key: str = "string_to_param.*"


@dataclass(frozen=True, eq=False)
class FamilySpec:
    """What distinguishes one model family.

    Attributes:
        name: stored in :class:`library.checkpoint.assemble.LoadedModels` and file configs (``sd1`` …).
        tool_flag: the kohya tool flag that names it (``--v1``, ``--v2``, ``--sdxl``).
        label: for messages (``SD2.x``). script_label: the families of its trainer script, for messages.
        trainer_script: kohya script that trains it. v2: an SD 2.x model (``--v2``, ``ss_v2``).
        ti_script: kohya's textual-inversion script for it.
        sgm_unet: the UNet module uses SGM/LDM names (files and LoRAs too), not diffusers names.
        text_encoders: one :class:`TextEncoderSlot` per text encoder, in order.
        vae_scale: latent scale factor. bucket_step_multiple: bucket sizes are multiples of it.
        latent_cache_tag: the ``_{tag}.npz`` suffix of latent caches.
        base_version: ``ss_base_model_version``; v_suffix: ``_v`` is appended under v-prediction.
        architecture, v_architecture: ``modelspec.architecture`` without ``/lora`` (epsilon, v-prediction).
        resolution, v_resolution: default ``modelspec.resolution`` side in pixels.
        implementation: ``modelspec.implementation``.
        pipeline: diffusers pipeline class; pipeline_kwargs: its ``from_pretrained`` extras.
        pipeline_index: ``model_index.json`` entries besides unet/vae/scheduler/text encoders/tokenizers.
        scheduler: diffusers scheduler of an exported folder (``None``: PNDM, or DDIM for v-prediction).
    """

    name: str
    tool_flag: str
    label: str
    script_label: str
    trainer_script: str
    ti_script: str
    v2: bool
    sgm_unet: bool
    text_encoders: tuple[TextEncoderSlot, ...]
    vae_scale: float
    bucket_step_multiple: int
    latent_cache_tag: str
    base_version: str
    v_suffix: bool
    architecture: str
    v_architecture: str
    resolution: int
    v_resolution: int
    implementation: str
    pipeline: str
    pipeline_kwargs: dict = field(default_factory=dict)
    pipeline_index: dict = field(default_factory=dict)
    scheduler: str | None = None

    def base_model_version(self, v_parameterization: bool) -> str:
        """``ss_base_model_version`` (FORMAT.md §4)."""
        return self.base_version + ("_v" if v_parameterization and self.v_suffix else "")

    def modelspec_architecture(self, v_parameterization: bool) -> str:
        """``modelspec.architecture`` without the ``/lora`` suffix (FORMAT.md §5)."""
        return self.v_architecture if v_parameterization else self.architecture

    def default_resolution(self, v_parameterization: bool) -> str:
        """``modelspec.resolution`` when ``--resolution`` is not set (``"1024x1024"`` …)."""
        side = self.v_resolution if v_parameterization else self.resolution
        return f"{side}x{side}"

    def full_configs(self) -> dict:
        """Full-size configs: ``{"unet", "text_encoders", "vae"}``."""
        return _configs(self.name, tiny=False)

    def tiny_configs(self) -> dict:
        """Tiny test-model configs with the full model's module names."""
        return _configs(self.name, tiny=True)

    def build_unet(self, config):
        """The UNet module of ``config`` (build under ``torch.device("meta")`` to skip allocation)."""
        if self.sgm_unet:
            from library.models.sdxl_unet import SdxlUNet

            return SdxlUNet(config)
        from library.models.sd_unet import build_sd_unet

        return build_sd_unet(config)

    def unet_config_from_dict(self, d: dict):
        """The UNet config object of a JSON dict (``SdxlUNetConfig`` or diffusers kwargs)."""
        if self.sgm_unet:
            from library.models.sdxl_unet import SdxlUNetConfig

            return SdxlUNetConfig.from_dict(d)
        return dict(d)

    def unet_config_from_diffusers(self, cfg: dict):
        """The UNet config object of a diffusers ``unet/config.json``."""
        if self.sgm_unet:
            from library.models.sdxl_unet import SdxlUNetConfig

            return SdxlUNetConfig.from_diffusers(cfg)
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    def default_prediction_type(self, unet_config) -> str:
        """``"v_prediction"`` for SD2's 768-px UNet (``sample_size`` 96), else ``"epsilon"``."""
        if self.v2 and isinstance(unet_config, dict) and unet_config.get("sample_size") == 96:
            return "v_prediction"
        return "epsilon"


def _clip_l(component: str, prefix: str, lora_prefix: str, **embedding_keys: str) -> TextEncoderSlot:
    return TextEncoderSlot(component, prefix, False, lora_prefix, "text_encoder", "clip_l",
                           ("openai_clip-vit-large-patch14",), "<|endoftext|>", 12, **embedding_keys)


_SD_COMMON = dict(script_label="SD1.x/SD2.x", trainer_script="train_network.py",
                  ti_script="train_textual_inversion.py", sgm_unet=False, vae_scale=0.18215,
                  bucket_step_multiple=64, latent_cache_tag="sd", v_suffix=True, resolution=512,
                  implementation="diffusers", pipeline="StableDiffusionPipeline",
                  pipeline_kwargs={"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
                  pipeline_index={"safety_checker": [None, None], "feature_extractor": [None, None],
                                  "image_encoder": [None, None], "requires_safety_checker": False})
SD1 = FamilySpec(
    name="sd1", tool_flag="v1", label="SD1.x", v2=False, base_version="sd_v1", architecture="stable-diffusion-v1",
    v_architecture="stable-diffusion-v1", v_resolution=512,
    text_encoders=(_clip_l("te0", "cond_stage_model.transformer.", "lora_te"),), **_SD_COMMON)
SD2 = FamilySpec(
    name="sd2", tool_flag="v2", label="SD2.x", v2=True, base_version="sd_v2", architecture="stable-diffusion-v2-512",
    v_architecture="stable-diffusion-v2-768-v", v_resolution=768,
    text_encoders=(TextEncoderSlot("te0", "cond_stage_model.model.", True, "lora_te", "text_encoder", "sd2",
                                   ("stabilityai_stable-diffusion-2/tokenizer", "stabilityai_stable-diffusion-2"),
                                   "!", 24, placeholder_last_layer=True),), **_SD_COMMON)
SDXL = FamilySpec(
    name="sdxl", tool_flag="sdxl", label="SDXL", script_label="SDXL", trainer_script="sdxl_train_network.py",
    ti_script="sdxl_train_textual_inversion.py", v2=False, sgm_unet=True,
    text_encoders=(_clip_l("te0", "conditioner.embedders.0.transformer.", "lora_te1", embedding_key="clip_l",
                           bundle_embedding_key="clip_l"),
                   TextEncoderSlot("te1", "conditioner.embedders.1.model.", True, "lora_te2", "text_encoder_2",
                                   "openclip_bigg", ("laion_CLIP-ViT-bigG-14-laion2B-39B-b160k",), "!", 32,
                                   keeps_logit_scale=True, embedding_key="clip_g", bundle_embedding_key="clip_g")),
    vae_scale=0.13025, bucket_step_multiple=32, latent_cache_tag="sdxl",
    base_version="sdxl_base_v1-0", v_suffix=False,  # kohya-compat: also for v-prediction SDXL
    architecture="stable-diffusion-xl-v1-base", v_architecture="stable-diffusion-xl-v1-base",
    resolution=1024, v_resolution=1024, implementation=SGM_URL,
    pipeline="StableDiffusionXLPipeline", scheduler="EulerDiscreteScheduler",
    pipeline_index={"force_zeros_for_empty_prompt": True, "image_encoder": [None, None],
                    "feature_extractor": [None, None]})
FAMILIES: dict[str, FamilySpec] = {s.name: s for s in (SD1, SD2, SDXL)}
TINY_ARCHS: dict[str, FamilySpec] = {"sd15": SD1, "sd2": SD2, "sdxl": SDXL}  # make_tiny_model --arch names
DEFAULT_FAMILY = SD1  # kohya's tools and train_network.py without --v2 / --sdxl


def family_spec(name: str) -> FamilySpec:
    """The :class:`FamilySpec` of a family name (``sd1``, ``sd2`` or ``sdxl``).

    Raises:
        ValueError: an unknown name.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}") from None


def flagged_families(**flags: bool) -> list[FamilySpec]:
    """The families whose kohya tool flag is set (``sdxl=args.sdxl, v2=args.v2`` …); SDXL, then SD2, then SD1."""
    return [s for s in (SDXL, SD2, SD1) if flags.get(s.tool_flag)]


def family_from_flags(**flags: bool) -> FamilySpec:
    """The family kohya's tool flags select: the first of :func:`flagged_families`, else ``DEFAULT_FAMILY``."""
    return next(iter(flagged_families(**flags)), DEFAULT_FAMILY)


def kohya_tokenizer_dirs() -> dict[str, tuple[str, ...]]:
    """``{tokenizer kind: kohya's cache folder names}`` over every family's text encoders."""
    return {slot.tokenizer: slot.kohya_tokenizer_dirs for spec in FAMILIES.values() for slot in spec.text_encoders}


def default_configs(family: str) -> dict:
    """Full-size configs of a family: ``{"unet", "text_encoders", "vae"}``."""
    return family_spec(family).full_configs()


def _configs(name: str, tiny: bool) -> dict:
    from library.models.sd_unet import sd_unet_config
    from library.models.sdxl_unet import SdxlUNetConfig
    from library.models.text_encoders import ClipTextConfig
    from library.models.vae import vae_config

    vae = vae_config(tiny=tiny)
    if name == "sdxl":
        if tiny:
            tes = [ClipTextConfig.tiny(), ClipTextConfig.tiny(projection_dim=32, hidden_act="gelu")]
        else:
            tes = [ClipTextConfig.clip_l(), ClipTextConfig.openclip_bigg()]
        return {"unet": SdxlUNetConfig.tiny() if tiny else SdxlUNetConfig.full(), "vae": vae, "text_encoders": tes}
    if name == "sd2":
        te = ClipTextConfig.tiny(hidden_act="gelu") if tiny else ClipTextConfig.openclip_h()
    else:
        te = ClipTextConfig.tiny() if tiny else ClipTextConfig.clip_l()
    return {"unet": sd_unet_config(name, tiny=tiny), "vae": vae, "text_encoders": [te]}


def check_fits(family: str, expected: str | None, v2: bool, where: str, script_attr: str = "trainer_script") -> None:
    """Raise a UserError naming the right script (or ``--v2``) when ``family`` does not fit the caller.

    Args:
        family: the detected family. expected: ``None`` (no check), a family name, or ``"sd"`` (either
            family of ``train_network.py``, told apart by ``v2``). v2: the caller passed ``--v2``.
        script_attr: the :class:`FamilySpec` field naming the caller's kind of script (``trainer_script``,
            ``ti_script``), for the message.
    """
    if expected is None:
        return
    spec = family_spec(family)
    script = getattr(SD1 if expected == "sd" else family_spec(expected), script_attr)
    if getattr(spec, script_attr) != script:
        raise UserError(f"{where}: this checkpoint is {spec.script_label}; use {getattr(spec, script_attr)}")
    siblings = [s for s in FAMILIES.values() if getattr(s, script_attr) == script]
    if len(siblings) > 1 and spec.v2 != v2:  # --v2 tells the families of one script apart
        raise UserError(f"{where}: this checkpoint is {spec.label}; {'add' if spec.v2 else 'remove'} --v2")
