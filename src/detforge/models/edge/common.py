"""Building blocks shared by the edge detectors: conv-BN-activation, depthwise-separable convs, CSP blocks,
per-level scales, and the ``Model(cfg)`` check of the config dataclasses. Location grids and box decoding are
``detforge.boxes``.

Everything here is a plain layer or a pure function; no block keeps state between calls.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ConvBNAct",
    "CSPBlock",
    "DepthwiseSeparable",
    "LearnedScale",
    "check_config_call",
    "config_kwargs",
    "count_parameters",
    "init_from_config",
]

Activation = Literal["relu", "silu", "none"]
_ACTIVATIONS = ("relu", "silu", "none")


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {name!r}")
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    return nn.Identity()


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + activation; 'same' padding for odd kernels at any dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: Activation = "relu",
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            _activation(activation),
        )


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 (stride, dilation) + pointwise 1x1, each with BN and activation (MobileNet v1 block)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        activation: Activation = "relu",
    ) -> None:
        super().__init__(
            ConvBNAct(
                in_channels,
                in_channels,
                kernel_size=3,
                stride=stride,
                dilation=dilation,
                groups=in_channels,
                activation=activation,
            ),
            ConvBNAct(in_channels, out_channels, kernel_size=1, activation=activation),
        )


class _Bottleneck(nn.Module):
    """Residual 1x1 -> depthwise 3x3 -> 1x1 bottleneck used inside ``CSPBlock``."""

    def __init__(self, channels: int, activation: Activation) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNAct(channels, channels, kernel_size=1, activation=activation),
            ConvBNAct(channels, channels, kernel_size=3, groups=channels, activation=activation),
            ConvBNAct(channels, channels, kernel_size=1, activation="none"),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CSPBlock(nn.Module):
    """Cross-stage-partial block: half the channels go through ``depth`` bottlenecks, half skip, then merge.

    ``forward(x Tensor[B, in, H, W]) -> Tensor[B, out, H, W]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, depth: int = 1, activation: Activation = "silu"
    ) -> None:
        super().__init__()
        hidden = max(out_channels // 2, 8)
        self.main = ConvBNAct(in_channels, hidden, kernel_size=1, activation=activation)
        self.shortcut = ConvBNAct(in_channels, hidden, kernel_size=1, activation=activation)
        self.blocks = nn.Sequential(*[_Bottleneck(hidden, activation) for _ in range(depth)])
        self.merge = ConvBNAct(2 * hidden, out_channels, kernel_size=1, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        main = self.blocks(self.main(x))  # [B, hidden, H, W]
        return self.merge(torch.cat([main, self.shortcut(x)], dim=1))  # [B, out, H, W]


class LearnedScale(nn.Module):
    """A single learnable multiplier (FCOS's per-level scale on the shared regression head)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_config_call(init: Any, cfg: Any, config_type: type, arguments: dict[str, Any]) -> None:
    """Check a ``Model(cfg)`` call: ``cfg`` is a ``config_type`` and no keyword argument of ``init`` differs
    from its default (the config alone says what to build; change it with ``dataclasses.replace``)."""
    if not isinstance(cfg, config_type):
        raise TypeError(f"the first argument must be a {config_type.__name__}, got {type(cfg).__name__}")
    params = inspect.signature(init).parameters
    changed = sorted(
        name
        for name, value in arguments.items()
        if name in params
        and params[name].kind is inspect.Parameter.KEYWORD_ONLY
        and value != params[name].default
    )
    changed += sorted(  # the post-processing keywords, taken as **postprocess
        key
        for name, value in arguments.items()
        if name in params and params[name].kind is inspect.Parameter.VAR_KEYWORD
        for key in value
    )
    if changed:
        raise ValueError(
            f"give either a {config_type.__name__} or keyword arguments, not both (got the config and {changed}); "
            "change the config with dataclasses.replace instead"
        )


def config_kwargs(cfg: Any) -> dict[str, Any]:
    """The keyword arguments that build an edge config's model: its fields, ``input_width`` and
    ``input_height`` as ``input_size=(h, w)``."""
    fields = {k: v for k, v in vars(cfg).items() if k not in ("input_width", "input_height")}
    return {**fields, "input_size": (cfg.input_height, cfg.input_width)}


def init_from_config(
    model: nn.Module, init: Any, cfg: Any, config_type: type, arguments: dict[str, Any]
) -> None:
    """``Model(cfg)``: check the call (:func:`check_config_call`), run ``init`` with the config's keyword
    arguments and record those as the model's ``init_args``."""
    check_config_call(init, cfg, config_type, arguments)
    kwargs = config_kwargs(cfg)
    init(model, **kwargs)
    model.init_args = kwargs
