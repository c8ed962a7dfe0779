"""The MOTChallenge text format and folder layout (MOT15/16/17/20, DanceTrack, and what ``detforge data synth
--format mot`` writes).

Text files hold one row per box, comma (or white-space) separated, frames 1-based, boxes in pixels:

- ground truth (``gt/gt.txt``): ``frame, id, left, top, width, height, considered, class, visibility``;
- results (a tracker's output, what MOTChallenge and TrackEval read): ``frame, id, left, top, width, height,
  score, -1, -1, -1``.

In memory a file is ``dict[int, dict[str, Tensor]]``: frame number -> ``boxes`` (float32 [N, 4] xyxy pixels,
``x2 = left + width``; MOT's left/top are used as they are, as TrackEval does), ``scores`` (float32 [N]; 1 in
gt files), ``labels`` (int64 [N], the MOT class minus one: 0 is pedestrian, see :data:`MOT_CLASSES`; 0 where
the file gives no class), ``track_ids`` (int64 [N]) and, for gt files, ``visibility`` (float32 [N], 1 where
not given) and ``considered`` (bool [N], the 7th column != 0). Frames without rows are absent.

Layout: ``<root>/<split>/<sequence>/{img1/000001.jpg ..., gt/gt.txt, seqinfo.ini}``; ``seqinfo.ini``'s
``[Sequence]`` gives ``name, imDir, frameRate, seqLength, imWidth, imHeight, imExt`` (without it: the folder
name, ``img1``, 30 fps, the image files found and the first one's size). detforge adds ``classNames`` for data
whose classes are not MOTChallenge's (the synthetic video); other readers ignore the key.

Ground-truth classes follow MOTChallenge's evaluation (TrackEval's ``MotChallenge2DBox`` preprocessing): only
considered pedestrians (class 1) are scored; a tracker box matched (Hungarian, IoU >= 0.5) to a distractor
(classes 2, 7, 8, 12: person on vehicle, static person, distractor, reflection; MOT20 adds 6, non-MOT vehicle)
is removed, neither false nor true positive; all other classes are dropped. :attr:`MOTSequence.protocol` names
it (``"mot17"``, ``"mot20"``) for :mod:`detforge.tracking.metrics`; DanceTrack (class 1 only) and data with
``classNames`` use ``"all"``: every considered box is scored, whatever its class.
"""

from __future__ import annotations

import configparser
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from detforge.boxes import convert_boxes
from detforge.errors import DataError, MissingFileError, UserError

__all__ = [
    "DISTRACTOR_LABELS",
    "MOT_CLASSES",
    "MOTSequence",
    "Protocol",
    "list_sequences",
    "load_sequence",
    "read_mot_txt",
    "write_mot_sequence",
    "write_mot_txt",
]

#: MOTChallenge classes; MOT class ``k`` is label ``k - 1``.
MOT_CLASSES = (
    "pedestrian",
    "person_on_vehicle",
    "car",
    "bicycle",
    "motorbike",
    "non_mot_vehicle",
    "static_person",
    "distractor",
    "occluder",
    "occluder_on_ground",
    "occluder_full",
    "reflection",
    "crowd",
)
Protocol = Literal["all", "mot17", "mot20"]
#: Labels (MOT class - 1) whose matched tracker boxes TrackEval removes, per protocol.
DISTRACTOR_LABELS: dict[str, tuple[int, ...]] = {"all": (), "mot17": (1, 6, 7, 11), "mot20": (1, 5, 6, 7, 11)}
_COLUMNS = 10


def _rows(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The numbers of a MOT text file: float64 [R, 10] (missing trailing columns NaN), the 1-based line number
    of each row [R] and the file's lines (for messages)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise MissingFileError(f"MOT file not found: {os.fspath(path)}") from None
    numbers = [i for i, line in enumerate(lines) if line.strip()]
    fields = [lines[i].replace(",", " ").split()[:_COLUMNS] for i in numbers]
    for row, i in zip(fields, numbers):
        if len(row) < 6:
            raise DataError(
                f"{os.fspath(path)}:{i + 1}: expected at least 6 values (frame, id, left, top, width, height), "
                f"got {len(row)}: {lines[i].strip()[:80]!r}"
            )
    padded = [row + ["nan"] * (_COLUMNS - len(row)) for row in fields]
    try:
        table = np.array(padded, dtype=np.float64).reshape(-1, _COLUMNS)
    except ValueError:
        for row, i in zip(padded, numbers):
            try:
                [float(v) for v in row]
            except ValueError:
                raise DataError(
                    f"{os.fspath(path)}:{i + 1}: not a number in {lines[i].strip()[:80]!r}"
                ) from None
        raise
    return table, np.asarray(numbers, dtype=np.int64) + 1, lines


def read_mot_txt(
    path: str | os.PathLike, *, gt: bool = False, dtype: torch.dtype = torch.float32
) -> dict[int, dict[str, Tensor]]:
    """Read a MOT text file (see the module docstring for the columns and the dicts returned).

    Args:
        path: a ``gt.txt`` or a tracker's results file.
        gt: read the 7th to 9th columns as ``considered, class, visibility`` (else as ``score, -1, -1``).
        dtype: of ``boxes``, ``scores`` and ``visibility`` (float64 keeps a file's values exactly).

    Raises:
        MissingFileError: no such file.
        DataError: a bad row (fewer than 6 values, not a number, a frame that is not an integer >= 1, an id that
            is not an integer (or negative in gt), a non-finite box, negative width or height, an id twice in one
            frame); the message names the file and the line.
    """
    table, line_of, lines = _rows(path)
    if not len(table):
        return {}
    frame, ids, xywh = table[:, 0], table[:, 1], table[:, 2:6]  # [R], [R], [R, 4]
    checks = [
        (~np.isfinite(frame) | (frame != np.round(frame)) | (frame < 1), "the frame must be an integer >= 1"),
        (~np.isfinite(ids) | (ids != np.round(ids)), "the id must be an integer"),
        (~np.isfinite(xywh).all(axis=1), "the box has a value that is not finite"),
        ((xywh[:, 2] < 0) | (xywh[:, 3] < 0), "the box has a negative width or height"),
    ]
    if gt:
        checks.append((ids < 0, "a ground-truth id must be >= 0"))
    for bad, why in checks:
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(f"{os.fspath(path)}:{line_of[k]}: {why}: {lines[line_of[k] - 1].strip()[:80]!r}")
    frame, ids = frame.astype(np.int64), ids.astype(np.int64)
    order = np.lexsort((ids, frame))  # by frame, then id
    same = (np.diff(frame[order]) == 0) & (np.diff(ids[order]) == 0) & (ids[order][1:] >= 0)
    if same.any():
        a, b = sorted(order[[int(np.flatnonzero(same)[0]), int(np.flatnonzero(same)[0]) + 1]])
        raise DataError(
            f"{os.fspath(path)}:{line_of[b]}: id {ids[b]} appears twice in frame {frame[b]} "
            f"(lines {line_of[a]} and {line_of[b]})"
        )
    # [R, 4] xyxy, x2 = left + width computed in float64
    boxes = convert_boxes(torch.from_numpy(xywh), "xywh", "xyxy").to(dtype)
    extra = table[:, 6:9]  # [R, 3]
    out: dict[str, Tensor] = {"boxes": boxes, "track_ids": torch.from_numpy(ids)}
    if gt:
        cls = np.nan_to_num(extra[:, 1], nan=-1.0)
        vis = extra[:, 2]
        out["scores"] = torch.ones(len(table), dtype=dtype)
        out["labels"] = torch.from_numpy(np.where(cls >= 1, cls - 1, 0).astype(np.int64))
        out["visibility"] = torch.from_numpy(np.where(np.isfinite(vis) & (vis >= 0), vis, 1.0)).to(dtype)
        out["considered"] = torch.from_numpy(np.nan_to_num(extra[:, 0], nan=1.0) != 0)
    else:
        out["scores"] = torch.from_numpy(np.nan_to_num(extra[:, 0], nan=1.0)).to(dtype)
        out["labels"] = torch.zeros(len(table), dtype=torch.int64)
    stable = np.argsort(frame, kind="stable")  # rows of a frame keep the file's order
    starts = np.flatnonzero(np.r_[True, np.diff(frame[stable]) != 0])
    ends = np.r_[starts[1:], len(stable)]
    index = torch.from_numpy(stable)
    return {int(frame[stable[s]]): {k: v[index[s:e]] for k, v in out.items()} for s, e in zip(starts, ends)}


def _number(value: float, digits: int) -> str:
    """``value`` with at most ``digits`` decimals, trailing zeros dropped (``12``, ``12.5``, ``0.861``)."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _format_rows(frames: dict[int, dict[str, Tensor]], gt: bool) -> list[str]:
    rows = []
    for frame in sorted(frames):
        if int(frame) != frame or frame < 1:
            raise ValueError(f"write_mot_txt: frame numbers are integers >= 1, got {frame!r}")
        entry = frames[frame]
        boxes = entry["boxes"].detach().reshape(-1, 4).double().cpu()  # [N, 4] xyxy
        n = boxes.shape[0]
        if "track_ids" not in entry or entry["track_ids"].numel() != n:
            raise ValueError(f"write_mot_txt: frame {frame} needs track_ids [{n}] beside boxes [{n}, 4]")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"write_mot_txt: frame {frame} has a box that is not finite")
        xywh = convert_boxes(boxes, "xyxy", "xywh").tolist()  # [N, 4]
        ids = entry["track_ids"].reshape(-1).tolist()

        def column(key: str, default: float, e: dict = entry, count: int = n) -> list:
            value = e.get(key)
            return (
                value.detach().reshape(-1).cpu().tolist() if isinstance(value, Tensor) else [default] * count
            )

        if gt:
            extra = [
                f"{int(bool(c))},{int(label) + 1},{_number(v, 5)}"
                for c, label, v in zip(
                    column("considered", 1), column("labels", 0), column("visibility", 1.0)
                )
            ]
        else:
            extra = [f"{_number(s, 5)},-1,-1,-1" for s in column("scores", 1.0)]
        for (x, y, w, h), tid, tail in zip(xywh, ids, extra):
            box = ",".join(_number(v, 3) for v in (x, y, w, h))
            rows.append(f"{frame},{int(tid)},{box},{tail}\n")
    return rows


def write_mot_txt(path: str | os.PathLike, frames: dict[int, dict[str, Tensor]], *, gt: bool = False) -> Path:
    """Write ``frames`` (the dicts :func:`read_mot_txt` returns) as a MOT text file, atomically.

    Rows are ``frame,id,left,top,width,height,score,-1,-1,-1`` (the results format), or with ``gt=True``
    ``frame,id,left,top,width,height,considered,class,visibility`` (class = label + 1). Box values keep 3
    decimals, scores and visibility 5 (a round trip moves a box by at most 0.0005 px; integer boxes not at all).

    Returns:
        ``path``.

    Raises:
        ValueError: a frame number that is not an integer >= 1, a box that is not finite, missing track ids.
        UserError: the file cannot be written (full disk, no permission); ``path`` is then left as it was.
    """
    path = Path(path)
    text = "".join(_format_rows(frames, gt))
    # As detforge.engine.callbacks.atomic_write (not imported: it loads Lightning): a temporary file in the same
    # folder renamed into place, so a killed run never leaves half a file.
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {err.strerror or err}") from err
        raise
    return path


@dataclass
class MOTSequence:
    """One video sequence: frames in order, frame rate, size and ground truth.

    Attributes:
        name: seqinfo's ``name`` (else the folder's name).
        num_frames: frames 1..num_frames.
        fps: frames per second.
        size: ``(height, width)`` of every frame, pixels.
        gt: frame -> gt dict (:func:`read_mot_txt` with ``gt=True``), None without ground truth (test splits).
        frame_paths: the image of each frame in order; empty for a rendered sequence (``render`` is set).
        class_names: names of the gt labels (:data:`MOT_CLASSES` for MOTChallenge data).
        protocol: which gt classes are scored (see the module docstring), for the metrics.
        folder: the sequence folder, or None.
        render: ``render(i) -> uint8 Tensor[3, H, W]`` of frame ``i + 1`` for a sequence without files.
    """

    name: str
    num_frames: int
    fps: float
    size: tuple[int, int]
    gt: dict[int, dict[str, Tensor]] | None = None
    frame_paths: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] = MOT_CLASSES
    protocol: Protocol = "all"
    folder: str | None = None
    render: Callable[[int], Tensor] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.num_frames

    def frame(self, index: int) -> Tensor:
        """Frame ``index + 1`` (``index`` 0-based) as uint8 ``Tensor[3, H, W]``."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"{self.name}: frame index {index} out of range for {self.num_frames} frames")
        if self.render is not None:
            return self.render(index)
        from detforge.io import load_image_uint8

        return load_image_uint8(self.frame_paths[index])

    def frames(self) -> Iterator[Tensor]:
        """Every frame in order, uint8 ``Tensor[3, H, W]``."""
        return (self.frame(i) for i in range(self.num_frames))


def _protocol(name: str, custom_classes: bool) -> Protocol:
    if custom_classes:
        return "all"
    if name.upper().startswith("MOT20"):
        return "mot20"
    return "mot17" if name.upper().startswith(("MOT16", "MOT17")) else "all"


def _is_sequence(folder: Path) -> bool:
    return (folder / "seqinfo.ini").is_file() or (folder / "img1").is_dir()


def load_sequence(folder: str | os.PathLike, *, with_gt: bool = True) -> MOTSequence:
    """Read one sequence folder (``seqinfo.ini``, ``img1/``, ``gt/gt.txt`` when present).

    Raises:
        MissingFileError: no such folder, or no images in it.
        DataError: a malformed ``seqinfo.ini`` or ``gt.txt`` (the message names the file).
    """
    path = Path(folder)
    if not path.is_dir():
        raise MissingFileError(f"MOT sequence folder not found: {path}")
    info: dict[str, str] = {}
    seqinfo = path / "seqinfo.ini"
    if seqinfo.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(seqinfo, encoding="utf-8")
            info = dict(parser["Sequence"]) if parser.has_section("Sequence") else {}
        except configparser.Error as err:
            raise DataError(f"{seqinfo}: not a valid seqinfo.ini ({str(err).splitlines()[0]})") from None
        if not info:
            raise DataError(f"{seqinfo}: no [Sequence] section")
    image_dir = path / info.get("imdir", "img1")
    try:
        length = int(info["seqlength"]) if "seqlength" in info else None
        fps = float(info.get("framerate", 30))
        size = (
            (int(info["imheight"]), int(info["imwidth"]))
            if "imheight" in info and "imwidth" in info
            else None
        )
    except ValueError as err:
        raise DataError(f"{seqinfo}: {err}") from None
    ext = info.get("imext")
    if length is None or ext is None:
        files = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise MissingFileError(f"{path}: no seqinfo.ini and no images in {image_dir}")
        ext = ext or files[0].suffix
        length = length if length is not None else len(files)
    paths = [str(image_dir / f"{i:06d}{ext}") for i in range(1, length + 1)]
    if size is None:
        from detforge.io import image_size

        size = image_size(paths[0])
    names = tuple(n.strip() for n in info["classnames"].split(",")) if info.get("classnames") else MOT_CLASSES
    gt_file = path / "gt" / "gt.txt"
    gt = read_mot_txt(gt_file, gt=True) if with_gt and gt_file.is_file() else None
    if gt and max(gt) > length:
        raise DataError(f"{gt_file}: frame {max(gt)} beyond the sequence's {length} frames ({seqinfo})")
    name = info.get("name", path.name)
    return MOTSequence(
        name, length, fps, size, gt, paths, names, _protocol(name, "classnames" in info), str(path)
    )


def list_sequences(
    root: str | os.PathLike, split: str | None = None, *, with_gt: bool = True
) -> list[MOTSequence]:
    """The sequences under ``root`` (or ``root/split``), sorted by folder name.

    ``root`` may be one sequence folder, a split folder (``MOT17/train``) or, with ``split``, a data set root.

    Raises:
        MissingFileError: the folder does not exist.
        DataError: no sequences there (the message lists the split folders found, if any).
    """
    base = Path(root) / split if split else Path(root)
    if not base.is_dir():
        raise MissingFileError(f"MOT folder not found: {base}")
    if _is_sequence(base):
        return [load_sequence(base, with_gt=with_gt)]
    folders = sorted(p for p in base.iterdir() if p.is_dir() and _is_sequence(p))
    if not folders:
        splits = sorted(p.name for p in base.iterdir() if p.is_dir() and any(map(_is_sequence, p.iterdir())))
        hint = f"; it holds the splits {', '.join(splits)}: name one" if splits else ""
        raise DataError(f"{base}: no MOT sequences (folders with seqinfo.ini or img1/){hint}")
    return [load_sequence(p, with_gt=with_gt) for p in folders]


def write_mot_sequence(
    sequence: MOTSequence, out_dir: str | os.PathLike, *, image_format: Literal["jpg", "png"] = "jpg"
) -> Path:
    """Write ``sequence`` in the MOT layout: ``out_dir/<name>/{img1/000001.<ext>, gt/gt.txt, seqinfo.ini}``
    (``gt.txt`` only when it has gt; ``classNames`` in ``seqinfo.ini`` unless its classes are MOTChallenge's).

    Returns:
        the sequence folder.
    """
    from PIL import Image

    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be one of ('jpg', 'png'), got {image_format!r}")
    if not re.fullmatch(r"[\w.-]+", sequence.name):
        raise ValueError(f"sequence name must be a plain folder name, got {sequence.name!r}")
    folder = Path(out_dir) / sequence.name
    (folder / "img1").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(sequence.frames()):
        array = image.permute(1, 2, 0).numpy()  # [H, W, C] uint8
        pil = Image.fromarray(np.ascontiguousarray(array[..., 0]) if array.shape[-1] == 1 else array)
        target = folder / "img1" / f"{i + 1:06d}.{image_format}"
        pil.save(target, **({"quality": 95} if image_format == "jpg" else {"compress_level": 1}))
    if sequence.gt is not None:
        write_mot_txt(folder / "gt" / "gt.txt", sequence.gt, gt=True)
    h, w = sequence.size
    lines = [
        "[Sequence]",
        f"name={sequence.name}",
        "imDir=img1",
        f"frameRate={_number(sequence.fps, 3)}",
        f"seqLength={sequence.num_frames}",
        f"imWidth={w}",
        f"imHeight={h}",
        f"imExt=.{image_format}",
    ]
    if tuple(sequence.class_names) != MOT_CLASSES:
        lines.append(f"classNames={','.join(sequence.class_names)}")
    (folder / "seqinfo.ini").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
