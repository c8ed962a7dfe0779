"""Training criteria: assignment + losses of a whole batch, parameter-free ``nn.Module``s shared by the
detectors (heads hold layers only).

- :class:`FCOSCriterion` (FCOS, Nexus): FCOS assignment, focal / quality focal, IoU loss, centerness,
  optional box uncertainty.
- :class:`YOLOXCriterion` (YOLOX, NightVision): SimOTA, objectness, IoU-weighted classes, IoU loss.
- :class:`SingleScaleCriterion` (Phantom): centre-cell assignment, focal score map, smooth L1 deltas.
- :class:`SetCriterion` (DETR family): Hungarian matching, softmax / focal / varifocal classes, L1 + GIoU,
  auxiliary losses on every decoder layer.

Each returns ``loss`` (the total), the detached parts and ``num_pos``; normalisers are averaged over DDP
ranks (:func:`mean_over_ranks`).
"""

from detforge.models.criteria.common import check_labels, mean_over_ranks, positives_normaliser
from detforge.models.criteria.fcos import FCOSCriterion, IoULossName, default_regress_ranges
from detforge.models.criteria.set_prediction import SetClassLoss, SetCriterion, SetMatch
from detforge.models.criteria.simota import YOLOXCriterion
from detforge.models.criteria.single_scale import SingleScaleCriterion

__all__ = [
    "FCOSCriterion",
    "IoULossName",
    "SetClassLoss",
    "SetCriterion",
    "SetMatch",
    "SingleScaleCriterion",
    "YOLOXCriterion",
    "check_labels",
    "default_regress_ranges",
    "mean_over_ranks",
    "positives_normaliser",
]
