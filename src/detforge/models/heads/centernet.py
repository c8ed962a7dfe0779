"""CenterNet head (Zhou et al. 2019): heatmap, size and offset branches on one stride-4 map."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CenterNetHead"]


def _branch(in_channels: int, channels: int, out_channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.Conv2d(channels if num_convs else in_channels, out_channels, 1))
    return nn.Sequential(*layers)


class CenterNetHead(nn.Module):
    """Three branches, each ``num_convs`` x (3x3 conv + ReLU) then a 1x1 conv, as in the original
    (``head_conv`` channels, one 3x3 conv).

    Args:
        in_channels: channels of the neck's map.
        num_classes: object classes (one heatmap each).
        channels: hidden channels of every branch.
        num_convs: 3x3 convs per branch (0: the 1x1 output conv only).
        heatmap_bias: initial bias of the heatmap logits (-2.19: ``sigmoid = 0.1``, the original).

    ``forward(x Tensor[B, in_channels, H, W])`` returns ``heatmap`` (Tensor[B, num_classes, H, W] logits),
    ``size`` (Tensor[B, 2, H, W] (w, h) in map units), ``offset`` (Tensor[B, 2, H, W] (dx, dy)) and
    ``feat_sizes`` ([(H, W)]). The size and offset outputs start near zero (their 1x1 convs N(0, 0.001), zero
    bias; the original also draws their 3x3 convs so, which slows the start), the heatmap branch has PyTorch's
    default initialisation and the bias above.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 64,
        num_convs: int = 1,
        heatmap_bias: float = -2.19,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        self.num_classes = int(num_classes)
        self.heatmap = _branch(in_channels, channels, num_classes, num_convs)
        self.size = _branch(in_channels, channels, 2, num_convs)
        self.offset = _branch(in_channels, channels, 2, num_convs)
        nn.init.constant_(self.heatmap[-1].bias, heatmap_bias)
        for branch in (self.size, self.offset):
            nn.init.normal_(branch[-1].weight, std=0.001)
            nn.init.zeros_(branch[-1].bias)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[tuple[int, int]]]:
        return {
            "heatmap": self.heatmap(x),  # [B, C, H, W]
            "size": self.size(x),  # [B, 2, H, W]
            "offset": self.offset(x),  # [B, 2, H, W]
            "feat_sizes": [(int(x.shape[-2]), int(x.shape[-1]))],
        }
