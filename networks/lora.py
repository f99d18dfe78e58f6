"""The built-in network module: LoRA and LoCon, kohya-compatible (``--network_module networks.lora``).

Behaviour, key names and files follow kohya-ss/sd-scripts ``networks/lora.py`` (NETWORKS.md). The
base models are patched by swapping ``forward`` of each target layer; the module tree and its
``state_dict`` keys never change, so networks can be stacked and removed in any order.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import torch
from torch import nn

from library.errors import UserError
from library.lora.algebra import lora_scale, max_norm_ratio, merge_delta
from library.lora.file import load_tensors
from library.io.safetensors_io import save_lora_file
from networks import _targets as T
from networks._module import LoRAModule

logger = logging.getLogger(__name__)

_LORA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
_KNOWN_ARGS = frozenset(("conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "block_dims",
                         "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight", "mid_lr_weight",
                         "up_lr_weight", "block_lr_zero_threshold", "loraplus_lr_ratio", "loraplus_unet_lr_ratio",
                         "loraplus_text_encoder_lr_ratio"))


def _module_rank(target: T.Target, is_unet: bool, lora_dim: int, alpha: float, a: T.LoraArgs,
                 is_sdxl: bool) -> tuple[int | None, float | None]:
    """Rank and alpha of one target from ``network_dim`` / conv / block settings (NETWORKS.md §3)."""
    if is_unet and a.block_dims is not None:
        idx = T.block_index(target.name, is_sdxl)
        if not target.is_conv_kxk:
            return (a.block_dims[idx], a.block_alphas[idx]) if idx >= 0 else (lora_dim, alpha)
        if a.conv_block_dims is not None and idx >= 0:
            return a.conv_block_dims[idx], a.conv_block_alphas[idx]
        return None, None
    if not target.is_conv_kxk:
        return lora_dim, alpha
    return a.conv_dim, a.conv_alpha


class LoRANetwork(nn.Module):
    """A set of :class:`LoRAModule` for the text encoders and the UNet.

    Args:
        text_encoders: list of text encoders (one: prefix ``lora_te``; two: ``lora_te1``/``lora_te2``).
        unet: the UNet (diffusers-named SD1/SD2 or SGM-named SDXL), or None.
        multiplier: output multiplier of every module.
        lora_dim, alpha: default rank and alpha.
        dropout: neuron dropout (``--network_dropout``).
        args: parsed ``network_args``.
        modules_dim, modules_alpha: per-name rank/alpha when built from a file (conv targets enabled).
    """

    def __init__(self, text_encoders: Sequence[nn.Module], unet: nn.Module | None, multiplier: float = 1.0,
                 lora_dim: int = 4, alpha: float = 1.0, dropout: float | None = None,
                 args: T.LoraArgs | None = None, modules_dim: Mapping[str, int] | None = None,
                 modules_alpha: Mapping[str, float] | None = None):
        super().__init__()
        self.multiplier = multiplier
        self.args = args or T.LoraArgs()
        self.is_sdxl = T.is_sdxl_unet(unet)
        self.loraplus_lr_ratio = self.args.loraplus_lr_ratio
        self.loraplus_unet_lr_ratio = self.args.loraplus_unet_lr_ratio
        self.loraplus_text_encoder_lr_ratio = self.args.loraplus_text_encoder_lr_ratio
        self.block_lr_weight = self.args.block_lr_weight
        common = dict(multiplier=multiplier, lora_dim=lora_dim, alpha=alpha, dropout=dropout,
                      modules_dim=modules_dim, modules_alpha=modules_alpha)
        self.text_encoder_loras: list[LoRAModule] = []
        tes = [te for te in text_encoders if te is not None]
        for i, te in enumerate(tes):
            prefix = f"lora_te{i + 1}" if len(tes) > 1 else "lora_te"
            targets = T.find_targets(te, prefix, T.TE_PARENTS, T.text_encoder_path_prefix(te))
            self.text_encoder_loras += self._create(targets, False, **common)
        logger.info("create LoRA for Text Encoder: %d modules.", len(self.text_encoder_loras))
        self.unet_loras: list[LoRAModule] = []
        if unet is not None:
            a = self.args
            conv = modules_dim is not None or a.conv_dim is not None or a.conv_block_dims is not None
            parents = T.UNET_PARENTS + (T.UNET_CONV_PARENTS if conv else ())
            self.unet_loras = self._create(T.find_targets(unet, "lora_unet", parents), True, **common)
        logger.info("create LoRA for U-Net: %d modules.", len(self.unet_loras))
        names = [m.lora_name for m in self.text_encoder_loras + self.unet_loras]
        if len(set(names)) != len(names):
            raise ValueError("duplicated LoRA module names")

    def _create(self, targets: list[T.Target], is_unet: bool, multiplier, lora_dim, alpha, dropout,
                modules_dim, modules_alpha) -> list[LoRAModule]:
        out, skipped = [], []
        for t in targets:
            if modules_dim is not None:
                dim, a = modules_dim.get(t.name), (modules_alpha or {}).get(t.name)
            else:
                dim, a = _module_rank(t, is_unet, lora_dim, alpha, self.args, self.is_sdxl)
            if not dim:
                if modules_dim is None and (not t.is_conv_kxk or self.args.conv_dim is not None
                                            or self.args.conv_block_dims is not None):
                    skipped.append(t.name)
                continue
            out.append(LoRAModule(t.name, t.module, multiplier, dim, a, dropout,
                                  self.args.rank_dropout, self.args.module_dropout))
        if skipped:
            logger.info("%d modules skipped because their rank is 0: %s", len(skipped), ", ".join(skipped[:8]))
        return out

    # ------------------------------------------------------------------ patching
    def apply_to(self, text_encoder, unet, apply_text_encoder: bool = True, apply_unet: bool = True) -> None:
        """Patch the models; the modules not applied are dropped so ``state_dict`` holds only trained ones."""
        if not apply_text_encoder:
            self.text_encoder_loras = []
        if not apply_unet:
            self.unet_loras = []
        for lora in self.text_encoder_loras + self.unet_loras:
            lora.apply_to()
            self.add_module(lora.lora_name, lora)

    def restore(self) -> None:
        """Unpatch every layer (any stacking order); the base models behave as before ``apply_to``."""
        for lora in self.text_encoder_loras + self.unet_loras:
            lora.restore()

    def set_multiplier(self, multiplier: float) -> None:
        """Set the output multiplier of every module (0 disables the network)."""
        self.multiplier = multiplier
        for lora in self.text_encoder_loras + self.unet_loras:
            lora.multiplier = multiplier

    def set_loraplus_lr_ratio(self, loraplus_lr_ratio: float | None, loraplus_unet_lr_ratio: float | None,
                              loraplus_text_encoder_lr_ratio: float | None) -> None:
        """Set LoRA+ ratios (kohya's ``--loraplus_*lr_ratio`` flags); ``lora_up`` groups get ``lr × ratio``."""
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.loraplus_unet_lr_ratio = loraplus_unet_lr_ratio
        self.loraplus_text_encoder_lr_ratio = loraplus_text_encoder_lr_ratio

    def is_mergeable(self) -> bool:
        """LoRA can always be merged into the base weights."""
        return True

    def enable_gradient_checkpointing(self) -> None:
        """No-op: the adapters are tiny."""

    def prepare_grad_etc(self, text_encoder=None, unet=None) -> None:
        """Make every adapter parameter trainable."""
        self.requires_grad_(True)

    def on_epoch_start(self, text_encoder=None, unet=None) -> None:
        """Switch to training mode."""
        self.train()

    def on_step_start(self, text_encoder=None, unet=None) -> None:
        """No-op."""

    def get_trainable_params(self):
        """Parameters clipped by ``--max_grad_norm``."""
        return self.parameters()

    # ------------------------------------------------------------------ optimizer groups
    def _groups(self, loras, lr, ratio, desc) -> tuple[list[dict], list[str]]:
        if lr is None or lr == 0 or not loras:
            if loras:
                logger.info("NO LR skipping! (%s)", desc)
            return [], []
        normal = [p for m in loras for n, p in m.named_parameters() if ratio is None or not n.startswith("lora_up")]
        plus = [p for m in loras for n, p in m.named_parameters() if ratio is not None and n.startswith("lora_up")]
        groups, descs = [{"params": normal, "lr": lr}], [desc]
        if plus and lr * ratio != 0:
            groups.append({"params": plus, "lr": lr * ratio})
            descs.append(f"{desc} plus")
        return groups, descs

    def prepare_optimizer_params_with_multiple_te_lrs(self, text_encoder_lr: Sequence[float] | None,
                                                      unet_lr: float | None, default_lr: float):
        """Parameter groups: text encoders (per TE lr), then UNet (per block with LR weights).

        Returns:
            ``(groups, descriptions)``; groups whose LR is 0 are dropped.
        """
        self.requires_grad_(True)
        lrs = [default_lr] if not text_encoder_lr else list(text_encoder_lr)
        te_ratio = self.loraplus_text_encoder_lr_ratio or self.loraplus_lr_ratio
        groups, descs = [], []
        by_te = {}
        for m in self.text_encoder_loras:
            i = 1 if m.lora_name.startswith("lora_te2") else 0
            by_te.setdefault(i, []).append(m)
        te_lrs = {i: lrs[min(i, len(lrs) - 1)] for i in by_te}
        if len(set(te_lrs.values())) <= 1:
            parts = [(self.text_encoder_loras, next(iter(te_lrs.values()), None), "textencoder")]
        else:
            parts = [(by_te[i], te_lrs[i], f"textencoder {i + 1}") for i in sorted(by_te)]
        for loras, lr, desc in parts:
            g, d = self._groups(loras, lr, te_ratio, desc)
            groups += g
            descs += d
        unet_lr = default_lr if unet_lr is None else unet_lr
        u_ratio = self.loraplus_unet_lr_ratio or self.loraplus_lr_ratio
        if self.block_lr_weight is None:
            g, d = self._groups(self.unet_loras, unet_lr, u_ratio, "unet")
            return groups + g, descs + d
        blocks: dict[int, list[LoRAModule]] = {}
        for m in self.unet_loras:
            blocks.setdefault(T.block_index(m.lora_name, self.is_sdxl), []).append(m)
        for idx, loras in blocks.items():
            w = self.block_lr_weight[idx] if idx >= 0 else 1.0
            g, d = self._groups(loras, unet_lr * w, u_ratio, f"unet_block{idx}")
            groups += g
            descs += d
        return groups, descs

    def prepare_optimizer_params(self, text_encoder_lr: float | None, unet_lr: float | None, default_lr: float):
        """Single text-encoder LR form of :meth:`prepare_optimizer_params_with_multiple_te_lrs`."""
        lrs = None if text_encoder_lr is None else [text_encoder_lr]
        return self.prepare_optimizer_params_with_multiple_te_lrs(lrs, unet_lr, default_lr)

    # ------------------------------------------------------------------ norms
    @torch.no_grad()
    def apply_max_norm_regularization(self, max_norm_value: float, device) -> tuple[int, float, float]:
        """Scale modules whose ``‖ΔW·scale‖_F`` exceeds ``max_norm_value``.

        Returns:
            ``(keys_scaled, mean_norm, max_norm)`` over all modules, after scaling.
        """
        scaled, norms = 0, []
        for m in self.text_encoder_loras + self.unet_loras:
            up, down = m.lora_up.weight, m.lora_down.weight
            ratio, norm = max_norm_ratio(up.to(device), down.to(device), m.scale, max_norm_value)
            if ratio != 1:
                scaled += 1
                up.mul_(ratio ** 0.5)
                down.mul_(ratio ** 0.5)
            norms.append(norm)
        if not norms:
            return 0, 0.0, 0.0
        return scaled, sum(norms) / len(norms), max(norms)

    # ------------------------------------------------------------------ files
    def save_weights(self, file: str, dtype: torch.dtype | None, metadata: Mapping[str, str] | None) -> None:
        """Write the state dict (alpha included, cast to ``dtype``) with ``sshs_*`` hashes for safetensors."""
        sd = {k: v.detach().to("cpu") for k, v in self.state_dict().items()}
        if dtype is not None:
            sd = {k: v.to(dtype) for k, v in sd.items()}
            _warn_alpha_cast(self.text_encoder_loras + self.unet_loras, dtype)
        save_lora_file(sd, file, dict(metadata or {}) if str(file).endswith(".safetensors") else None)

    def load_weights(self, file: str):
        """Load a kohya LoRA file into the applied modules (non-strict).

        Returns:
            ``load_state_dict`` info with ``missing_keys`` / ``unexpected_keys``.

        Raises:
            UserError: no key matches, or a tensor shape differs (another rank or architecture).
        """
        weights = read_weights(file)
        own = self.state_dict()
        matched = [k for k in weights if k in own]
        if weights and not matched:
            first = next(iter(weights))
            raise UserError(f"{file}: no key matches this network (first: {first}); the file was made for "
                            "another model family or network type")
        for k in matched:
            if weights[k].shape != own[k].shape:
                raise UserError(f"{file}: {k} has shape {tuple(weights[k].shape)}, this network expects "
                                f"{tuple(own[k].shape)}; the file has another rank or architecture "
                                "(use --dim_from_weights or the matching --network_dim)")
        info = self.load_state_dict(weights, strict=False)
        for m in self.text_encoder_loras + self.unet_loras:
            m.refresh_scale()
        return info

    @torch.no_grad()
    def merge_to(self, text_encoder, unet, weights_sd: Mapping[str, torch.Tensor], dtype=None, device=None) -> None:
        """Add ``multiplier · ΔW`` of ``weights_sd`` into the base weights, one tensor at a time (fp32).

        Raises:
            UserError: a merged weight would contain NaN or Inf (nothing is written for that layer).
        """
        has_te = any(k.startswith("lora_te") for k in weights_sd)
        has_unet = any(k.startswith("lora_unet") for k in weights_sd)
        loras = (self.text_encoder_loras if has_te else []) + (self.unet_loras if has_unet else [])
        for m in loras:
            down = weights_sd.get(f"{m.lora_name}.lora_down.weight")
            up = weights_sd.get(f"{m.lora_name}.lora_up.weight")
            if down is None or up is None:
                continue
            alpha = weights_sd.get(f"{m.lora_name}.alpha")
            scale = lora_scale(None if alpha is None else float(alpha), down.shape[0])
            weight = m.org_module[0].weight
            merged = merge_delta(weight, up, down, scale, m.multiplier, device)
            if not torch.isfinite(merged).all():
                raise UserError(f"{m.lora_name}: merging gives NaN/Inf values; the LoRA file is corrupt")
            weight.data.copy_(merged.to(dtype or weight.dtype))
        logger.info("weights are merged")


def _warn_alpha_cast(loras: Sequence[LoRAModule], dtype: torch.dtype) -> None:
    for m in loras:
        a = float(m.alpha)
        if a and abs(float(m.alpha.to(dtype)) - a) / a > 1e-3:
            logger.warning("alpha %s of %s is not exact in %s; the saved scale differs slightly", a, m.lora_name, dtype)
            return


def read_weights(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a LoRA state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    return load_tensors(file)[0]


def _as_list(text_encoder) -> list:
    if text_encoder is None:
        return []
    return list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder]


def create_network(multiplier: float, network_dim: int | None, network_alpha: float | None, vae,
                   text_encoder, unet, neuron_dropout: float | None = None, **kwargs) -> LoRANetwork:
    """Create a LoRA/LoCon network (kohya protocol). ``kwargs`` are the string ``network_args``.

    Args:
        multiplier: output multiplier (1.0 from the trainer).
        network_dim: rank (``None`` -> 4); network_alpha: alpha (``None`` -> 1.0).
        vae: unused.
        text_encoder: one text encoder, or ``[te1, te2]`` for SDXL.
        unet: the UNet.
        neuron_dropout: dropout on the rank activations.

    Raises:
        UserError: a bad ``network_args`` value.
    """
    dim = 4 if network_dim is None else int(network_dim)  # kohya-compat: defaults dim 4 / alpha 1
    alpha = 1.0 if network_alpha is None else float(network_alpha)
    args = T.parse_network_args(kwargs, dim, alpha, T.is_sdxl_unet(unet), logger)
    if set(kwargs) - _KNOWN_ARGS:
        logger.warning("network_args ignored by networks.lora: %s", ", ".join(sorted(set(kwargs) - _KNOWN_ARGS)))
    return LoRANetwork(_as_list(text_encoder), unet, multiplier, dim, alpha, neuron_dropout, args)


def _check_parts(file, weights_sd: Mapping[str, torch.Tensor]) -> None:
    for key in weights_sd:
        if key.startswith("lora_") and key.partition(".")[2] not in _LORA_PARTS:
            raise UserError(f"{file}: key {key} is not a LoRA/LoCon tensor; load this file with "
                            "--network_module lycoris.kohya")


def _check_match(file, network: LoRANetwork, weights_sd: Mapping[str, torch.Tensor], has_te: bool,
                 has_unet: bool) -> None:
    shapes = {f"{m.lora_name}.{k}": v.shape for m in network.text_encoder_loras + network.unet_loras
              for k, v in m.state_dict().items()}
    for key, value in weights_sd.items():
        if (not key.startswith("lora_") or (key.startswith("lora_te") and not has_te)
                or (key.startswith("lora_unet") and not has_unet)):
            continue
        if key not in shapes:
            raise UserError(f"{file}: key {key} matches no layer of this model; the LoRA was made for another "
                            "model family (SD1/SD2/SDXL) or architecture")
        if tuple(value.shape) != tuple(shapes[key]):
            raise UserError(f"{file}: {key} has shape {tuple(value.shape)} but this model needs "
                            f"{tuple(shapes[key])}; the LoRA was made for another architecture")


def create_network_from_weights(multiplier: float, file, vae, text_encoder, unet,
                                weights_sd: Mapping[str, torch.Tensor] | None = None,
                                for_inference: bool = False, **kwargs) -> tuple[LoRANetwork, dict]:
    """Create a network whose modules, ranks and alphas come from a LoRA file.

    Ranks are ``lora_down.shape[0]``, alpha is ``<name>.alpha`` (or the rank), conv targets are on.
    For SDXL, diffusers-named UNet keys are renamed to SGM names first (FORMAT.md §9.2).

    Returns:
        ``(network, weights_sd)`` with ``weights_sd`` in this network's key names.

    Raises:
        UserError: the file is for another architecture, rank layout or network type.
    """
    weights = dict(read_weights(file) if weights_sd is None else weights_sd)
    if T.is_sdxl_unet(unet) and any(k.startswith("lora_unet_down_blocks_") or k.startswith("lora_unet_up_blocks_")
                                    or k.startswith("lora_unet_mid_block_") for k in weights):
        names = T.sdxl_diffusers_lora_names(unet)
        weights = {(names.get(k.partition(".")[0], k.partition(".")[0]) + "." + k.partition(".")[2]): v
                   for k, v in weights.items()}
    _check_parts(file, weights)
    dims = {k.partition(".")[0]: int(v.shape[0]) for k, v in weights.items() if k.endswith(".lora_down.weight")}
    alphas = {k.partition(".")[0]: float(v) for k, v in weights.items() if k.endswith(".alpha")}
    alphas = {n: alphas.get(n, float(d)) for n, d in dims.items()}
    args = T.parse_network_args(kwargs, 4, 1.0, T.is_sdxl_unet(unet), logger)
    tes = _as_list(text_encoder)
    network = LoRANetwork(tes, unet, multiplier, args=args, modules_dim=dims, modules_alpha=alphas)
    _check_match(file, network, weights, bool(tes), unet is not None)
    return network, weights
