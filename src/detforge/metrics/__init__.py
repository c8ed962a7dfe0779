"""Evaluation: VOC AP, COCO mAP exact to pycocotools, a torchmetrics metric, F1-confidence curves, confusion
matrices, tables and plots."""

from detforge.metrics.ap import DetectionResult, GroundTruth, compute_ap, compute_coco_map, compute_map
from detforge.metrics.coco import (
    COCO_AREA_RANGES,
    COCO_STAT_NAMES,
    COCOEvalResult,
    COCOEvaluator,
    evaluate_coco_files,
    load_coco_json,
)
from detforge.metrics.coco_data import CocoDetections, CocoGroundTruth
from detforge.metrics.confusion import MatchInputs, confusion_matrix, image_errors
from detforge.metrics.f1 import DetectionSummary, F1Curve, f1_curve, summarize
from detforge.metrics.metric import DetectionMAP
from detforge.metrics.plots import (
    plot_confusion_matrix,
    plot_detection_summary,
    plot_f1_curves,
    plot_pr_curves,
)
from detforge.metrics.results_io import coco_results, write_coco_results
from detforge.metrics.table import format_coco_table

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_STAT_NAMES",
    "COCOEvalResult",
    "COCOEvaluator",
    "CocoDetections",
    "CocoGroundTruth",
    "DetectionMAP",
    "DetectionResult",
    "DetectionSummary",
    "F1Curve",
    "GroundTruth",
    "MatchInputs",
    "compute_ap",
    "compute_coco_map",
    "compute_map",
    "confusion_matrix",
    "coco_results",
    "evaluate_coco_files",
    "f1_curve",
    "format_coco_table",
    "image_errors",
    "load_coco_json",
    "plot_confusion_matrix",
    "plot_detection_summary",
    "plot_f1_curves",
    "plot_pr_curves",
    "summarize",
    "write_coco_results",
]
