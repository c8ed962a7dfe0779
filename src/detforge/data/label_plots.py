"""``labels.png``: the training labels at a glance, drawn from :class:`~detforge.data.label_stats.LabelStatistics`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detforge.data.label_stats import LabelStatistics

__all__ = ["plot_label_statistics"]

# Class names are written under the bars up to this many classes (beyond, the indices' axis only).
_MAX_NAMED_CLASSES = 40


def _figure(width: float, height: float, rows: int, cols: int):
    """A standalone matplotlib Figure (no pyplot state, no display needed) and its ``[rows, cols]`` axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.subplots(rows, cols)


def plot_label_statistics(stats: LabelStatistics, path: str | Path) -> Path:
    """A 2x2 PNG figure: boxes per class (bars, class names), box centre heat-map (a 2-D histogram of the
    centres normalised by their image's size, image orientation: y down), box width against height in pixels
    at the input size (2-D histogram, log colour scale) and objects per image (histogram). The title says how
    many images were counted when only a sample of the data set was. Returns ``path``."""
    from matplotlib.colors import LogNorm

    fig, ((counts_ax, centre_ax), (size_ax, objects_ax)) = _figure(11, 9, 2, 2)
    per_class = stats.per_class.numpy()  # [C]
    names = stats.class_names
    x = np.arange(len(per_class))
    counts_ax.bar(x, per_class, color="tab:blue")
    if len(names) <= _MAX_NAMED_CLASSES:
        counts_ax.set_xticks(x, names, rotation=90 if len(names) > 6 else 0, fontsize=7)
    counts_ax.set(
        title="boxes per class", ylabel="boxes", xlabel="class" if len(names) > _MAX_NAMED_CLASSES else None
    )

    centres = stats.centres.numpy()  # [N, 2]
    sizes = stats.sizes.numpy()  # [N, 2]
    if len(centres):
        bins = int(np.clip(np.sqrt(len(centres)), 10, 50))  # about one box per cell when there are few
        hist, _, _ = np.histogram2d(centres[:, 1], centres[:, 0], bins=bins, range=[[0, 1], [0, 1]])  # [y, x]
        image = centre_ax.imshow(hist, extent=(0, 1, 1, 0), cmap="viridis", aspect="equal")
        fig.colorbar(image, ax=centre_ax, fraction=0.046, pad=0.04, label="boxes")
        top = max(float(sizes.max()), 1.0)
        side = float(stats.imgsz) if stats.imgsz is not None else top
        span = [[0, max(side, top)], [0, max(side, top)]]
        _, _, _, mesh = size_ax.hist2d(
            sizes[:, 0], sizes[:, 1], bins=50, range=span, cmap="viridis", norm=LogNorm()
        )
        fig.colorbar(mesh, ax=size_ax, fraction=0.046, pad=0.04, label="boxes")
        size_ax.set_aspect("equal")
    else:
        for ax in (centre_ax, size_ax):
            ax.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=ax.transAxes)
    centre_ax.set(
        title="box centres", xlabel="x / image width", ylabel="y / image height", xlim=(0, 1), ylim=(1, 0)
    )
    where = f"at the {stats.imgsz} px input" if stats.imgsz is not None else "in image pixels"
    size_ax.set(title=f"box sizes {where}", xlabel="width (px)", ylabel="height (px)")

    per_image = stats.objects_per_image.numpy()  # [M]
    if len(per_image):
        frequency = np.bincount(per_image)  # [max + 1]
        objects_ax.bar(np.arange(len(frequency)), frequency, width=1.0, color="tab:green")
    objects_ax.set(title="objects per image", xlabel="objects", ylabel="images")

    for ax in (counts_ax, size_ax, objects_ax):
        ax.grid(alpha=0.3)
    counted = stats.images_counted
    sample = (
        f"all {counted} images"
        if counted == stats.num_images
        else f"{counted} evenly spaced images of {stats.num_images}"
    )
    special = f", {stats.crowd_or_ignored} crowd/ignored" if stats.crowd_or_ignored else ""
    fig.suptitle(f"training labels: {stats.num_boxes} boxes{special} in {sample}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
