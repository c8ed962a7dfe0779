"""YOLOv1 (Redmon et al. 2016, "You Only Look Once") on any timm backbone, and its registered builders.

- the backbone's last map, resampled to an S x S grid (7) by :class:`~detforge.models.heads.yolov1.YOLOv1Head`;
  output S x S x (B * 5 + C), B = 2 boxes per cell; the cells cover the whole input whatever its size or
  shape (a 64 x 96 input has 7 x 7 cells of 9.1 x 13.7 pixels);
- activations: sigmoid on ``x, y`` (offset in the cell), ``sqrt w, sqrt h`` (fractions of the image) and the
  confidence, softmax on the class logits (``Pr(class | object)``); the paper's outputs are linear, the
  bounded activations keep an untrained model's boxes finite and inside the image;
- loss: the paper's sum-squared loss (:class:`~detforge.models.criteria.yolov1.YOLOv1Criterion`), lambda_coord
  5, lambda_noobj 0.5, divided by the batch size;
- inference: class-specific confidence ``Pr(class | object) * confidence`` per box, then the shared
  post-processing (NMS).

Registered: ``yolov1_<timm name>`` for any timm backbone (448 px input, head width 512) and ``yolov1_n``, the
small default (mobilenetv3_small_100, head width 128, 256 px input).
"""

from __future__ import annotations

from typing import Any, Unpack

from torch import Tensor, nn

from detforge.boxes import cell_to_xyxy
from detforge.models.backbone import FeatureBackboneConfig, FeatureBody
from detforge.models.base import Detector, PostprocessOptions
from detforge.models.criteria.yolov1 import YOLOv1Criterion
from detforge.models.heads.yolov1 import YOLOv1Head
from detforge.models.registry import register_model, register_prefix
from detforge.targets import pad_targets

__all__ = ["YOLOv1", "build_yolov1", "yolov1_n"]


class YOLOv1(Detector):
    """YOLOv1 on any timm backbone.

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or a built timm feature extractor (its last
            level is used).
        num_classes: C.
        grid_size: S, cells per side (7).
        boxes_per_cell: B (2).
        head_width: hidden channels of the head.
        lambda_coord, lambda_noobj: weights of the coordinate and no-object confidence terms (5, 0.5).
        score_thresh, nms_thresh, max_detections_per_image, pre_nms_topk, nms_method, soft_nms_sigma: the
            shared post-processing settings, on the class-specific confidences.
        in_chans, input_size: image channels; (h, w) the model is meant to run at (448 as the paper).
    """

    raw_outputs_on_grid = True

    postprocess_defaults = {"nms_thresh": 0.5}

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        grid_size: int = 7,
        boxes_per_cell: int = 2,
        head_width: int = 512,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        in_chans: int = 3,
        input_size: tuple[int, int] = (448, 448),
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        if int(grid_size) < 1 or int(boxes_per_cell) < 1:
            raise ValueError(f"grid_size and boxes_per_cell must be >= 1, got {grid_size}, {boxes_per_cell}")
        self.grid_size = int(grid_size)
        self.boxes_per_cell = int(boxes_per_cell)
        self.features = FeatureBody(backbone, in_chans, tuple(input_size))
        self.head = YOLOv1Head(self.features.channels[-1], num_classes, boxes_per_cell, grid_size, head_width)
        self.criterion = YOLOv1Criterion(grid_size, lambda_coord, lambda_noobj)

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor (what ``ObjectDetector.freeze_backbone`` freezes)."""
        return self.features.body

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw outputs, cells row-major: ``box_params`` [N, S * S, B, 4] (x, y, sqrt w, sqrt h in [0, 1]),
        ``confidence`` [N, S * S, B], ``class_probs`` [N, S * S, C], ``boxes`` [N, S * S, B, 4] xyxy pixels,
        and ``image_size`` (h, w)."""
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        out = self.head(self.features(images)[-1]).flatten(1, 2)  # [N, S * S, B * 5 + C]
        k = self.boxes_per_cell
        per_box = out[..., : 5 * k].unflatten(-1, (k, 5)).sigmoid()  # [N, S * S, B, 5]
        box_params = per_box[..., :4]  # [N, S * S, B, 4]
        return {
            "box_params": box_params,
            "confidence": per_box[..., 4],  # [N, S * S, B]
            "class_probs": out[..., 5 * k :].softmax(-1),  # [N, S * S, C]
            "boxes": cell_to_xyxy(box_params, self.grid_size, image_size),  # [N, S * S, B, 4]
            "image_size": image_size,
        }

    def loss(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """The paper's sum-squared loss divided by the batch size (averaged over DDP ranks)."""
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, outputs["boxes"].device)
        return self.criterion(
            outputs["box_params"],
            outputs["confidence"],
            outputs["class_probs"],
            outputs["boxes"],
            outputs["image_size"],
            gt_boxes,
            gt_labels,
            gt_mask,
        )

    def level_sizes(self, outputs: dict) -> list[int]:
        return [self.grid_size * self.grid_size * self.boxes_per_cell]

    def decode(self, outputs: dict) -> tuple[Tensor, Tensor]:
        """Class-specific confidences ``Pr(class | object) * confidence`` (Tensor[N, S * S * B, C]) and xyxy
        boxes (Tensor[N, S * S * B, 4])."""
        scores = outputs["class_probs"].float()[:, :, None, :] * outputs["confidence"].float()[..., None]
        return scores.flatten(1, 2), outputs["boxes"].float().flatten(1, 2)


@register_prefix("yolov1_")
def build_yolov1(
    timm_name: str,
    num_classes: int = 20,
    pretrained: bool | str = False,
    out_indices: tuple[int, ...] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> YOLOv1:
    """YOLOv1 on the timm backbone ``timm_name`` (its last level; 7 x 7 grid, 2 boxes per cell, 448 px);
    ``backbone_kwargs`` as in :func:`detforge.models.zoo.build_fcos`."""
    from detforge.models.zoo import _backbone

    return YOLOv1(_backbone(timm_name, pretrained, out_indices, backbone_kwargs), num_classes, **kwargs)


# YOLOv1's 7 x 7 grid over a 128 px input is finer than the backbone's 4 x 4 stride-32 map; at 224 px the map
# is the grid (32 px cells): 0.107 mAP in the 4:30 budget at lr 1e-2, against 0.005 at 128 px.
@register_model("yolov1_n", recipe={"model.lr": 1e-2, "data.imgsz": 224})
def yolov1_n(num_classes: int = 20, pretrained: bool | str = False, **kwargs: Any) -> YOLOv1:
    """Small YOLOv1: mobilenetv3_small_100, head width 128, 7 x 7 grid, 2 boxes per cell, 256 px input."""
    options: dict[str, Any] = dict(head_width=128, input_size=(256, 256))
    options.update(kwargs)
    return build_yolov1("mobilenetv3_small_100", num_classes, pretrained, **options)
