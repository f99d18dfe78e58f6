"""fp8 storage of frozen base weights (``--fp8_base`` / ``--fp8_base_unet``, TRAINING.md §2.2).

:func:`store_in_fp8` turns the weight of every frozen ``torch.nn.Linear`` / ``torch.nn.Conv2d`` leaf into a
``float8_e4m3fn`` Parameter and gives that *instance* a ``forward`` that upcasts the weight for each call.
The class stays exactly ``Linear`` / ``Conv2d`` and ``module.weight`` stays a Parameter (NETWORKS.md §1), so
network plugins that keep ``org_module.forward`` and replace it wrap the upcasting forward.

The upcast happens inside an autograd function that keeps only the fp8 Parameter for the backward pass and
upcasts it again there: no full-precision copy of a weight outlives its layer's call (every Linear, and
every Conv2d with zero padding given as numbers). Biases, norms and embeddings stay in the compute dtype
(a few percent of the bytes).
"""

from __future__ import annotations

import types
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from library.errors import UserError

_FP8_NAMES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")


def fp8_dtype() -> torch.dtype:
    """The storage dtype, ``torch.float8_e4m3fn``.

    Raises:
        UserError: this torch has no ``float8_e4m3fn`` (it needs torch >= 2.1).
    """
    dtype = getattr(torch, "float8_e4m3fn", None)
    if dtype is None:  # kohya-compat: kohya asserts torch >= 2.1 for fp8_base
        raise UserError(f"--fp8_base / --fp8_base_unet need torch >= 2.1 (float8_e4m3fn); torch is "
                        f"{torch.__version__}: upgrade torch")
    return dtype


def is_fp8(dtype: torch.dtype) -> bool:
    """True for the float8 dtypes of torch."""
    return any(getattr(torch, name, None) == dtype for name in _FP8_NAMES)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in: that of its first floating-point parameter not stored in fp8.

    Use it instead of ``next(model.parameters()).dtype``, which is fp8 once :func:`store_in_fp8` ran.
    Returns ``torch.float32`` when the model has no such parameter.
    """
    for param in model.parameters():
        if param.is_floating_point() and not is_fp8(param.dtype):
            return param.dtype
    return torch.float32


def _call_dtype(x: torch.Tensor, compute: torch.dtype) -> torch.dtype:
    """The dtype of one call: autocast's where autocast is on for ``x``'s device, else ``compute``.

    fp8 values are exact in fp16 and bf16, so upcasting straight to autocast's dtype gives the same
    numbers as upcasting to ``compute`` and letting autocast cast again.
    """
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return compute


class _UpcastLinear(torch.autograd.Function):
    """``F.linear`` with an fp8 weight upcast to ``dtype``; the backward re-upcasts (grad for ``x`` only)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        ctx.save_for_backward(weight)
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        return F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = grad.to(ctx.dtype).matmul(weight.to(ctx.dtype)).to(ctx.x_dtype)
        return grad_x, None, None, None


class _UpcastConv2d(torch.autograd.Function):
    """``Conv2d`` (zero padding given as numbers) with an fp8 weight upcast to ``dtype``; grad for ``x`` only."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype, conv):
        ctx.save_for_backward(weight)
        ctx.dtype, ctx.x_dtype, ctx.x_shape = dtype, x.dtype, x.shape
        ctx.geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        return F.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), *ctx.geometry)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight.to(ctx.dtype), grad.to(ctx.dtype), *ctx.geometry)
        return grad_x.to(ctx.x_dtype), None, None, None, None


def _upcast_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Instance ``forward`` of an fp8 ``Linear``: ``x (..., in) -> (..., out)`` in the call dtype."""
    return _UpcastLinear.apply(x, self.weight, self.bias, _call_dtype(x, self.fp8_compute_dtype))


def _upcast_conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Instance ``forward`` of an fp8 ``Conv2d``: ``x (B, C, H, W)`` in the call dtype."""
    dtype = _call_dtype(x, self.fp8_compute_dtype)
    if self.padding_mode == "zeros" and not isinstance(self.padding, str):
        return _UpcastConv2d.apply(x, self.weight, self.bias, dtype, self)
    bias = None if self.bias is None else self.bias.to(dtype)  # rare layouts: autograd keeps the copy
    return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias)


def _is_frozen_leaf(module: nn.Module) -> bool:
    kind = type(module)
    return (kind is nn.Linear or kind is nn.Conv2d) and not module.weight.requires_grad


def _convert(module: nn.Module, dtype: torch.dtype | None, storage: torch.dtype) -> None:
    """Store ``module.weight`` in ``storage`` (saturated at its largest finite value) and upcast per call."""
    weight = module.weight
    dtype = dtype or weight.dtype
    limit = torch.finfo(storage).max
    with torch.no_grad():
        # sd-train: kohya casts plainly; saturating first keeps out-of-range weights finite on every device
        weight.data = weight.data.clamp(-limit, limit).to(storage)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)
    module.fp8_compute_dtype = dtype
    body = _upcast_linear_forward if type(module) is nn.Linear else _upcast_conv_forward
    module.forward = types.MethodType(body, module)


def store_in_fp8(model: nn.Module, compute_dtype: torch.dtype | None = None) -> int:
    """Store the weights of every frozen ``Linear`` / ``Conv2d`` leaf of ``model`` in ``float8_e4m3fn``.

    Call it before a network is applied. Each converted layer computes in ``compute_dtype`` (under
    autocast: autocast's dtype); its output dtype is that dtype. Gradients flow to the layer input, never
    to the fp8 weight. Leaves whose weight requires grad, leaves already in fp8 and every other module
    (norms, embeddings) are left as they are.

    Args:
        model: a model, or a single leaf.
        compute_dtype: dtype of the upcast weight (and of the bias); ``None``: each weight's current dtype.

    Returns:
        The number of layers converted.

    Raises:
        UserError: torch has no float8 (see :func:`fp8_dtype`).
        RuntimeError: a leaf's ``forward`` was already replaced (a network applied before this call).
    """
    storage, count = fp8_dtype(), 0
    for name, module in model.named_modules():
        if not _is_frozen_leaf(module) or is_fp8(module.weight.dtype):
            continue
        if "forward" in module.__dict__:
            raise RuntimeError(f"{name or type(module).__name__}: forward already replaced; call store_in_fp8 "
                               "before the network is applied")
        _convert(module, compute_dtype, storage)
        count += 1
    return count


def apply_fp8_base(unet: nn.Module, text_encoders: Iterable[nn.Module], *, fp8_base: bool,
                   fp8_base_unet: bool) -> int:
    """The trainer's ``--fp8_base`` / ``--fp8_base_unet``: UNet always, text encoders with ``--fp8_base`` only.

    Every model keeps computing in the dtype it has now (the caller cast it to ``weight_dtype`` first).
    ``--fp8_base_unet`` wins when both are set (the text encoders stay out of fp8, as in kohya).

    Returns:
        The number of layers converted (0 when neither flag is set).
    """
    if not (fp8_base or fp8_base_unet):
        return 0
    models = [unet] if fp8_base_unet else [unet, *text_encoders]
    return sum(store_in_fp8(model) for model in models)
