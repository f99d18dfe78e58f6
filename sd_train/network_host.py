"""The plugin host (NETWORKS.md §2): imports any ``--network_module`` by dotted name, checks required methods,
defaults optional ones, normalizes results and saves atomically. The only place that probes a plugin."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Protocol, Sequence

import torch

from library.errors import UserError
from library.io.safetensors_io import atomic_path
from sd_train.class_names import resolve_network_module

logger = logging.getLogger(__name__)

REQUIRED_METHODS = ("apply_to", "prepare_optimizer_params", "prepare_grad_etc", "on_epoch_start",
                    "get_trainable_params", "save_weights")
LYCORIS_BOOL_KEYS = ("use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp", "use_scalar", "dora_wd", "bypass_mode",
                     "rs_lora", "train_norm", "rescaled", "wd_on_output", "full_matrix", "unbalanced_factorization")


class NetworkPlugin(Protocol):
    """kohya's required network methods (NETWORKS.md §2.2); the host defaults the optional ones (prepare_network,
    enable_gradient_checkpointing, on_step_start, set_multiplier, max-norm, norms, multiple-TE-lr groups)."""

    def apply_to(self, text_encoder, unet, apply_text_encoder: bool, apply_unet: bool) -> None: ...
    def prepare_optimizer_params(self, text_encoder_lr, unet_lr, learning_rate): ...
    def prepare_grad_etc(self, text_encoder, unet) -> None: ...
    def on_epoch_start(self, text_encoder, unet) -> None: ...
    def get_trainable_params(self) -> Iterable[torch.nn.Parameter]: ...
    def save_weights(self, file: str, dtype: torch.dtype | None, metadata: dict | None) -> None: ...


class NonFiniteNetworkError(FloatingPointError):
    """A trainable network parameter holds NaN/Inf; nothing was written."""


def parse_network_args(network_args: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["k=v", …]`` (or a dict) -> ``{k: "v"}`` (strings, as kohya passes them); UserError without ``=``."""
    if isinstance(network_args, Mapping):
        return {str(k): (v if v is None else str(v)) for k, v in network_args.items()}
    out = {}
    for item in network_args or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"--network_args {item!r}: expected key=value, e.g. conv_dim=4")
        out[key.strip()] = value.strip()
    return out


def _te_arg(text_encoders):
    """kohya passes one TE object for SD1/SD2 and the list ``[te1, te2]`` for SDXL."""
    tes = text_encoders
    return (tes[0] if len(tes) == 1 else list(tes)) if isinstance(tes, (list, tuple)) else tes


class NetworkHost:
    """Wraps one imported network ``module`` (dotted ``module_name``) and, once created, its ``network``."""

    def __init__(self, module: Any, module_name: str):
        self.module, self.module_name, self.network = module, module_name, None

    @classmethod
    def load(cls, module_name: str) -> "NetworkHost":
        """Import ``module_name`` by dotted name; UserError when it is missing or has no ``create_network``."""
        module = resolve_network_module(module_name)
        if not callable(getattr(module, "create_network", None)):
            raise UserError(f"--network_module {module_name}: has no create_network(); not a network module")
        return cls(module, module_name)

    @classmethod
    def create(cls, opts: Any, vae, text_encoders, unet) -> "NetworkHost":
        """Trainer convenience: load, create (from ``--network_weights`` with ``--dim_from_weights``), prepare."""
        n = opts.network
        host = cls.load(n.network_module or "networks.lora")
        if n.dim_from_weights:
            host.create_from_weights(1.0, n.network_weights, vae, text_encoders, unet, n.network_args)
        else:
            host.create_network(1.0, n.network_dim, n.network_alpha, vae, text_encoders, unet,
                                n.network_dropout, n.network_args)
        if host.network is None:
            raise UserError(f"--network_module {host.module_name}: create_network returned None; nothing to train")
        groups = [getattr(opts, f.name) for f in dataclasses.fields(opts)]  # kohya-named flat namespace
        host.prepare_network(SimpleNamespace(**{k: v for g in groups if dataclasses.is_dataclass(g)
                                                for k, v in vars(g).items()}))
        return host

    def create_network(self, multiplier: float, dim: int | None, alpha: float | None, vae, text_encoders, unet,
                       dropout: float | None, network_args: Sequence[str] | Mapping[str, Any] | None) -> Any:
        """Call ``create_network`` with string ``network_args`` (+ ``dropout`` when absent); None if it declines.
        UserError for bad ``network_args``, a missing required method, or LyCORIS's duplicated-name bug."""
        kwargs = parse_network_args(network_args)
        kwargs.setdefault("dropout", dropout)  # kohya-compat: LyCORIS reads dropout from kwargs
        for key in LYCORIS_BOOL_KEYS if self.module_name.startswith("lycoris") else ():
            if str(kwargs.get(key)).strip().lower() in ("0", "no", "off"):
                logger.warning("network_args %s=%s means TRUE for LyCORIS (only 'false' is false); "
                               "write %s=false", key, kwargs[key], key)
        try:
            net = self.module.create_network(multiplier, dim, alpha, vae, _te_arg(text_encoders), unet,
                                             neuron_dropout=dropout, **kwargs)
        except AssertionError as exc:
            if "duplicated lora name" in str(exc):
                raise UserError(f"--network_module {self.module_name}: {exc} (lycoris-lora 4.1.3 bug with the "
                                "SD1 UNet's TimestepEmbedding); add --network_args preset=attn-mlp") from None
            raise
        return self._adopt(net)

    def create_from_weights(self, multiplier: float, file: str, vae, text_encoders, unet,
                            network_args=None, for_inference: bool = False) -> tuple[Any, dict]:
        """Call ``create_network_from_weights`` (``--dim_from_weights``, base weights); no automatic ``dropout``."""
        if not callable(getattr(self.module, "create_network_from_weights", None)):
            raise UserError(f"--network_module {self.module_name}: has no create_network_from_weights()")
        net, sd = self.module.create_network_from_weights(multiplier, file, vae, _te_arg(text_encoders), unet,
                                                          for_inference=for_inference,
                                                          **parse_network_args(network_args))
        if not for_inference:
            self._adopt(net)
        return net, sd

    def _adopt(self, net: Any) -> Any:
        missing = [n for n in REQUIRED_METHODS if net is not None and not callable(getattr(net, n, None))]
        if missing:
            raise UserError(f"--network_module {self.module_name}: the network has no {missing[0]}() method")
        self.network = net
        return net

    def _optional(self, name: str):
        return getattr(self.network, name, None)  # kohya-compat: optional plugin method probe

    def _call_optional(self, name: str, *args) -> Any:
        return None if self._optional(name) is None else self._optional(name)(*args)

    def prepare_network(self, args: Any) -> None:
        """Call the optional ``prepare_network(args)`` with a kohya-named options namespace."""
        self._call_optional("prepare_network", args)

    def apply_to(self, text_encoders, unet, apply_text_encoder: bool, apply_unet: bool) -> None:
        """Patch the models; both booleans are passed positionally (LyCORIS asserts them)."""
        self.network.apply_to(_te_arg(text_encoders), unet, bool(apply_text_encoder), bool(apply_unet))

    def load_weights(self, file: str) -> Any:
        """Load ``--network_weights`` non-strictly; missing/unexpected keys are logged as a warning."""
        info = self.network.load_weights(file)
        if info if isinstance(info, dict) else (getattr(info, "missing_keys", 0) or getattr(info, "unexpected_keys", 0)):
            logger.warning("network weights %s loaded with differences: %s", file, info)
        return info

    def enable_gradient_checkpointing(self) -> None:
        """Forward ``--gradient_checkpointing`` to the plugin when it supports it."""
        self._call_optional("enable_gradient_checkpointing")

    def optimizer_groups(self, te_lrs: Sequence[float] | None, unet_lr: float | None,
                         lr: float) -> tuple[list[dict], list[str]]:
        """``(groups, descriptions)`` whatever shape the plugin returns (CLI.md §10 default names)."""
        te_lrs = list(te_lrs) if te_lrs else None
        multi = self._optional("prepare_optimizer_params_with_multiple_te_lrs")
        fn, te_lr = self.network.prepare_optimizer_params, (te_lrs[0] if te_lrs else None)
        if multi is not None:
            result = multi(te_lrs, unet_lr, lr)
        else:  # kohya-compat: old plugins take (text_encoder_lr, unet_lr) only
            result = fn(te_lr, unet_lr) if _positional_count(fn) == 2 else fn(te_lr, unet_lr, lr)
        pair = isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], (list, tuple))
        groups, descs = [_normalize_group(g) for g in (result[0] if pair else result)], list(result[1] if pair else [])
        if len(descs) != len(groups):
            descs = ["textencoder", "unet"] if len(groups) == 2 else [f"group{i}" for i in range(len(groups))]
        return groups, descs

    def prepare_optimizer_params(self, optimizer_opts: Any) -> tuple[list[dict], list[str]]:
        """Trainer convenience: :meth:`optimizer_groups` from ``text_encoder_lr``/``unet_lr``/``learning_rate``."""
        te = optimizer_opts.text_encoder_lr
        return self.optimizer_groups([te] if isinstance(te, (int, float)) else te, optimizer_opts.unet_lr,
                                     optimizer_opts.learning_rate)

    def prepare_grad_etc(self, text_encoders, unet) -> None:
        """Call ``prepare_grad_etc`` before the loop."""
        self.network.prepare_grad_etc(_te_arg(text_encoders), unet)

    def on_epoch_start(self, text_encoders, unet) -> None:
        """Call ``on_epoch_start`` at the start of every epoch."""
        self.network.on_epoch_start(_te_arg(text_encoders), unet)

    def on_step_start(self, text_encoders, unet) -> None:
        """Call the optional ``on_step_start`` at every micro-batch."""
        self._call_optional("on_step_start", _te_arg(text_encoders), unet)

    def set_multiplier(self, multiplier: float) -> None:
        """Set the network multiplier (differential output preservation); UserError when unsupported."""
        if self._optional("set_multiplier") is None:
            raise UserError(f"--network_module {self.module_name}: has no set_multiplier(); "
                            "differential output preservation needs it")
        self.network.set_multiplier(multiplier)

    def get_trainable_params(self) -> list[torch.nn.Parameter]:
        """Flat list of the parameters to clip (plugins may return tensors or param-group dicts)."""
        items = self.network.get_trainable_params()
        return [p for item in items for p in (item["params"] if isinstance(item, dict) else [item])]

    def apply_max_norm_regularization(self, max_norm: float, device) -> tuple[int, float, float] | None:
        """``(keys_scaled, mean_norm, max_norm)``, or None (with a warning) when unsupported."""
        if self._optional("apply_max_norm_regularization") is None:
            logger.warning("%s has no apply_max_norm_regularization; --scale_weight_norms ignored", self.module_name)
        return self._call_optional("apply_max_norm_regularization", max_norm, device)

    def norms(self) -> dict[str, Any]:
        """Values of the optional ``weight_norms``/``grad_norms``/``combined_weight_norms`` (absent ones omitted)."""
        names = ("weight_norms", "grad_norms", "combined_weight_norms")
        return {n: v for n in names if (v := self._call_optional(n)) is not None}

    def save(self, path: str, dtype: torch.dtype | None, metadata: Mapping[str, str] | None) -> None:
        """Check finiteness (NonFiniteNetworkError, nothing written), then let the plugin write to a temp
        path with the same suffix and rename it into place."""
        if not all(bool(torch.isfinite(p.detach()).all()) for p in self.get_trainable_params()):
            raise NonFiniteNetworkError(f"network has NaN/Inf parameters; {path} was not written")
        with atomic_path(path) as tmp:
            self.network.save_weights(str(tmp), dtype, None if metadata is None else dict(metadata))

    def merge_base_weights(self, paths: Sequence[str], multipliers: Sequence[float] | None, text_encoders, unet,
                           dtype: torch.dtype | None, device) -> None:
        """Merge each ``--base_weights`` file (multiplier 1.0 when not given) through the plugin's ``merge_to``."""
        for path, m in zip(paths, [*(multipliers or []), *[1.0] * len(paths)]):
            net, sd = self.create_from_weights(m, path, None, text_encoders, unet, for_inference=True)
            if not callable(getattr(net, "merge_to", None)):
                raise UserError(f"--network_module {self.module_name}: cannot merge --base_weights (no merge_to)")
            net.merge_to(_te_arg(text_encoders), unet, sd, dtype, device)
            logger.info("merged base weights %s (multiplier %s)", path, m)


def _normalize_group(group: Any) -> dict:
    """A param-group dict with a list of params; ``lr: None`` is dropped so the optimizer default applies."""
    group = dict(group) if isinstance(group, dict) else {"params": group}
    group = {k: v for k, v in group.items() if k != "lr" or v is not None}  # kohya-compat: unet_lr=None passed on
    return {**group, "params": list(group["params"])}


def _positional_count(fn) -> int:
    """Number of positional parameters of a bound method (-1 with ``*args`` or no signature)."""
    try:
        kinds = [p.kind for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
        return -1
    return -1 if inspect.Parameter.VAR_POSITIONAL in kinds else sum(k <= inspect.Parameter.POSITIONAL_OR_KEYWORD
                                                                     for k in kinds)
