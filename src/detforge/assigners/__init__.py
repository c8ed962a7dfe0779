"""Target assignment: which prediction learns from which ground-truth box (parameter-free, whole batch)."""

from detforge.assigners.fcos import (
    FCOS_P3_P7_RANGES,
    FCOS_P3_P7_STRIDES,
    FCOSAssigner,
    FCOSTargets,
    fcos_centerness,
)
from detforge.assigners.fcos_reference import FCOSLocationTarget, assign_fcos_targets, fcos_targets_to_tensors
from detforge.assigners.hungarian import HungarianMatcher
from detforge.assigners.simota import SimOTAAssigner, SimOTAAssignment, batched_box_iou
from detforge.assigners.single_scale import (
    SingleScaleAssigner,
    SingleScaleTargets,
    assign_phantom_targets,
    decode_single_scale_boxes,
)

__all__ = [
    "FCOS_P3_P7_RANGES",
    "FCOS_P3_P7_STRIDES",
    "FCOSAssigner",
    "FCOSLocationTarget",
    "FCOSTargets",
    "HungarianMatcher",
    "SimOTAAssigner",
    "SimOTAAssignment",
    "SingleScaleAssigner",
    "SingleScaleTargets",
    "assign_phantom_targets",
    "assign_fcos_targets",
    "batched_box_iou",
    "decode_single_scale_boxes",
    "fcos_centerness",
    "fcos_targets_to_tensors",
]
