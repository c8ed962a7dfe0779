"""Slicing for images larger than the network input: tile geometry (:mod:`.tiles`), merging the detections
of overlapping tiles (:mod:`.merge`) and sliced inference for any detector (:mod:`.predict`)."""

from detforge.slicing.merge import MatchMetric, MergeMethod, match_pairs, merge_detections
from detforge.slicing.predict import Predictor, as_predictor, sliced_predict
from detforge.slicing.tiles import axis_starts, pair, tile_windows

__all__ = [
    "MatchMetric",
    "MergeMethod",
    "Predictor",
    "as_predictor",
    "axis_starts",
    "match_pairs",
    "merge_detections",
    "pair",
    "sliced_predict",
    "tile_windows",
]
