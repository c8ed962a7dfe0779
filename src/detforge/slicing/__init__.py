"""Slicing: tile geometry (:mod:`.tiles`) for sliced training and sliced inference on images larger than
the network input."""

from detforge.slicing.tiles import axis_starts, pair, tile_windows

__all__ = ["axis_starts", "pair", "tile_windows"]
