"""SSDlite's feature extractor: a MobileNetV3 body tapped at its C4 expansion, then four extra blocks.

As in the MobileNetV3 paper (section 6.3) and torchvision's ``SSDLiteFeatureExtractorMobileNet``: the first
map is the output of the expansion 1x1 conv of the last stride-2 block (C4, stride 16), the second the body's
last layer (stride 32), then four depthwise-separable extra blocks halve the resolution each (strides 64-512
at 320 px). The body is torchvision's own ``mobilenet_v3_large`` / ``mobilenet_v3_small`` ``features`` module,
kept whole (its tensors are named as in torchvision's ImageNet checkpoints, so ``pretrained=PATH`` loads one
directly); the tap runs the C4 block's layers one by one.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Literal, get_args

from torch import Tensor, nn

__all__ = ["MobileNetName", "SSDLiteExtractor", "conv_bn_relu6", "normal_init", "ssd_batch_norm"]

MobileNetName = Literal["mobilenet_v3_large", "mobilenet_v3_small"]

ssd_batch_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
"""SSDlite's BatchNorm (TensorFlow's defaults: eps 1e-3, momentum 0.03)."""


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
):
    """Conv (no bias) -> BatchNorm -> ReLU6, padding ``kernel_size // 2``: Tensor[B, in, H, W] ->
    Tensor[B, out, H / stride, W / stride] (tensor names ``0.weight``, ``1.*`` as torchvision's
    ``Conv2dNormActivation``)."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        ),
        ssd_batch_norm(out_channels),
        nn.ReLU6(inplace=True),
    )


def normal_init(module: nn.Module, std: float = 0.03) -> None:
    """SSDlite's initialisation of every conv in ``module``: weights normal(0, ``std``), biases zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """One extra level: 1x1 to ``out / 2``, depthwise 3x3 stride 2, 1x1 to ``out`` (each BN + ReLU6)."""
    mid = out_channels // 2
    return nn.Sequential(
        conv_bn_relu6(in_channels, mid),
        conv_bn_relu6(mid, mid, 3, stride=2, groups=mid),
        conv_bn_relu6(mid, out_channels),
    )


class _FeatureInfo:
    """timm's ``feature_info`` of the body (stride and module of each stage), read by
    :func:`detforge.models.backbone.freeze_stages` (``freeze_backbone_stride``)."""

    def __init__(self, info: list[dict]) -> None:
        self.info = info


def _stage_info(body: nn.Sequential) -> list[dict]:
    """The last module at each stride of a MobileNetV3 ``features`` module."""
    stride, info = 1, []
    for i, layer in enumerate(body):
        if any(isinstance(m, nn.Conv2d) and m.stride[0] == 2 for m in layer.modules()):
            stride *= 2
        if info and info[-1]["reduction"] == stride:
            info[-1]["module"] = str(i)
        else:
            info.append({"module": str(i), "reduction": stride})
    return info


class SSDLiteExtractor(nn.Module):
    """MobileNetV3 body + SSDlite extra blocks: ``forward(x Tensor[B, C, H, W]) -> list of 6 maps``
    (Tensor[B, out_channels[l], H_l, W_l], strides 16, 32, 64, 128, 256, 512 when the sides divide).

    Args:
        name: the MobileNetV3 variant.
        reduced_tail: halve the channels of the last stage (the MobileNetV3 paper's detection variant; what
            torchvision uses without an ImageNet backbone, and so in its COCO weights).
        width_mult: MobileNetV3's width multiplier (the extra blocks' widths scale too, at least 16).
        in_chans: image channels (the stem conv takes them).
        pretrained: a torchvision ImageNet checkpoint of the same variant (``mobilenet_v3_large-*.pth``) to
            load into the body (``reduced_tail=False`` for torchvision's files); a 3-channel stem is adapted to
            ``in_chans`` as timm does.
    """

    def __init__(
        self,
        name: MobileNetName = "mobilenet_v3_large",
        reduced_tail: bool = True,
        width_mult: float = 1.0,
        in_chans: int = 3,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if name not in get_args(MobileNetName):
            raise ValueError(f"backbone must be one of {get_args(MobileNetName)}, got {name!r}")
        from torchvision import models

        net = getattr(models, name)(
            weights=None, norm_layer=ssd_batch_norm, reduced_tail=reduced_tail, width_mult=width_mult
        )
        self.body: nn.Sequential = net.features
        if in_chans != 3:
            stem = self.body[0][0]
            self.body[0][0] = nn.Conv2d(in_chans, stem.out_channels, 3, 2, 1, bias=False)
        normal_init(self.body)
        self.body.feature_info = _FeatureInfo(_stage_info(self.body))
        stages = [i for i, layer in enumerate(self.body) if getattr(layer, "_is_cn", False)]
        self.c4_pos = stages[-1]  # the last stride-2 block: its expansion output is the first map
        tapped = self.body[self.c4_pos]
        if tapped.use_res_connect:
            raise ValueError(f"block {self.c4_pos} of {name} has a residual connection: it cannot be tapped")
        depth = lambda d: max(16, int(d * width_mult))  # noqa: E731
        widths = [depth(512), depth(256), depth(256), depth(128)]
        last = self.body[-1].out_channels
        self.extra = nn.ModuleList(extra_block(c_in, c_out) for c_in, c_out in zip([last, *widths], widths))
        normal_init(self.extra)
        self.out_channels = [tapped.block[0].out_channels, last, *widths]
        if pretrained is not None:
            self.load_imagenet(pretrained)

    def load_imagenet(self, path: str | os.PathLike) -> None:
        """Load a torchvision ImageNet MobileNetV3 checkpoint (``features.*`` tensors) into the body; a
        :class:`~detforge.models.pretrained.WeightMappingError` names the first tensor that does not fit."""
        from detforge.models.pretrained import load_into, load_state_dict_file

        state = {
            k[len("features.") :]: v
            for k, v in load_state_dict_file(path).items()
            if k.startswith("features.")
        }
        stem = self.body[0][0].weight
        if "0.0.weight" in state and state["0.0.weight"].shape[1] != stem.shape[1]:
            from timm.models._manipulate import adapt_input_conv

            state["0.0.weight"] = adapt_input_conv(stem.shape[1], state["0.0.weight"])
        load_into(self.body, state, "SSDlite MobileNetV3 body", os.fspath(path))

    def forward(self, x: Tensor) -> list[Tensor]:
        """The six maps of ``x`` (Tensor[B, C, H, W], normalised)."""
        for layer in self.body[: self.c4_pos]:
            x = layer(x)
        block = self.body[self.c4_pos].block
        x = block[0](x)  # the C4 expansion
        maps = [x]
        for layer in block[1:]:
            x = layer(x)
        for layer in self.body[self.c4_pos + 1 :]:
            x = layer(x)
        maps.append(x)
        for layer in self.extra:
            x = layer(x)
            maps.append(x)
        return maps
