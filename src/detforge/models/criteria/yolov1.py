"""YOLOv1 criterion (Redmon et al. 2016): the sum-squared loss of the paper, batched.

With ``1obj_i`` the cells holding an object (:func:`~detforge.assigners.yolov1.assign_cells`) and
``1obj_ij`` the responsible box j of such a cell (of its B boxes, the highest IoU with the object; the
first on ties):

- coordinates: ``lambda_coord * sum 1obj_ij [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 +
  (sqrt h - sqrt h^)^2]``;
- confidence: ``sum 1obj_ij (C - IoU)^2`` (the target is the responsible box's IoU, detached) plus
  ``lambda_noobj * sum (1 - 1obj_ij) C^2`` over every other box;
- classes: ``sum 1obj_i sum_c (p(c) - p^(c))^2``.

The paper sums over the batch; here the sums are divided by the batch size averaged over DDP ranks, so the
loss does not grow with the batch and the mean of the ranks' losses is the loss of all their images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.assigners.yolov1 import assign_cells
from detforge.losses.iou import paired_box_iou
from detforge.models.criteria.common import check_labels, loss_dict, mean_over_ranks

__all__ = ["YOLOv1Criterion"]


class YOLOv1Criterion(nn.Module):
    """YOLOv1 losses of a whole batch; no parameters.

    Args:
        grid_size: S.
        lambda_coord, lambda_noobj: the paper's 5 and 0.5.
    """

    def __init__(self, grid_size: int = 7, lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> None:
        super().__init__()
        if lambda_coord < 0 or lambda_noobj < 0:
            raise ValueError(
                f"lambda_coord and lambda_noobj must be >= 0, got {lambda_coord}, {lambda_noobj}"
            )
        self.grid_size = int(grid_size)
        self.lambda_coord = float(lambda_coord)
        self.lambda_noobj = float(lambda_noobj)

    def forward(
        self,
        box_params: Tensor,
        confidence: Tensor,
        class_probs: Tensor,
        boxes: Tensor,
        image_size: tuple[int, int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            box_params: Tensor[N, S * S, B, 4] predicted (x, y, sqrt w, sqrt h); confidence: Tensor[N, S * S, B];
                class_probs: Tensor[N, S * S, C]; boxes: Tensor[N, S * S, B, 4] the boxes decoded to xyxy pixels.
            image_size: (h, w) of the input.
            gt_boxes: Tensor[N, G, 4] xyxy pixels, gt_labels: Tensor[N, G] int64, gt_mask: Tensor[N, G] bool.

        Returns:
            ``loss``, detached ``coord_loss``, ``obj_loss``, ``noobj_loss``, ``cls_loss`` and ``num_pos``.
        """
        n, cells, num_boxes, _ = box_params.shape
        num_classes = class_probs.shape[-1]
        check_labels(gt_labels, gt_mask, num_classes)
        cell = assign_cells(gt_boxes, gt_labels, gt_mask, self.grid_size, image_size)
        has_obj = cell.matched_gt >= 0  # [N, S * S]
        safe = cell.matched_gt.clamp(min=0)
        if gt_boxes.shape[1]:
            target_boxes = gt_boxes.float().gather(1, safe[..., None].expand(-1, -1, 4))  # [N, S * S, 4]
        else:
            target_boxes = boxes.new_zeros(n, cells, 4)
        iou = paired_box_iou(boxes.detach().float(), target_boxes[:, :, None, :])  # [N, S * S, B]
        responsible = F.one_hot(iou.argmax(-1), num_boxes).bool() & has_obj[..., None]  # [N, S * S, B]

        coord = ((box_params.float() - cell.params[:, :, None, :]) ** 2).sum(-1)  # [N, S * S, B]
        coord_loss = (coord * responsible).sum()
        conf = confidence.float()
        obj_loss = (((conf - iou) ** 2) * responsible).sum()
        noobj_loss = ((conf**2) * ~responsible).sum()
        cls_target = F.one_hot(cell.labels.clamp(min=0), num_classes).to(class_probs.dtype)  # [N, S * S, C]
        cls_loss = (((class_probs.float() - cls_target) ** 2).sum(-1) * has_obj).sum()

        batch = mean_over_ranks(torch.tensor(float(n), device=box_params.device)).clamp(min=1.0)
        coord_loss, obj_loss, noobj_loss, cls_loss = (
            v / batch for v in (coord_loss, obj_loss, noobj_loss, cls_loss)
        )
        return loss_dict(
            {
                "coord_loss": (self.lambda_coord, coord_loss),
                "obj_loss": (1.0, obj_loss),
                "noobj_loss": (self.lambda_noobj, noobj_loss),
                "cls_loss": (1.0, cls_loss),
            },
            has_obj.sum(),
        )
