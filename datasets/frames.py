"""Frame folders on disk (docs/method.md §1): ``<folder>/image_00001.jpg …``, 1-based, 5 digits.

Frames are read as encoded bytes and decoded in one batched ``torchvision.io.decode_jpeg`` call
(no PIL). Every read/decode problem surfaces as a :class:`FrameError` naming the file.

A path that names a video file instead (:func:`is_video_file`: ``.mp4 .avi .mkv .webm .mov``, any
case) is decoded by :func:`datasets.video.load_video_frames` into the same layout, frame index
``k`` being the ``k``-th decoded frame, so every dataset and transform takes either.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg

FRAME_TEMPLATE = "image_{:05d}.jpg"
DONE_MARKER = ".done"  # written by scripts/extract_frames.py: the frame count of a finished video
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether a CSV path names a video file (by its extension, any case; a folder whose name
    ends in one is a frame folder)."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS) and not os.path.isdir(path)


class FrameError(RuntimeError):
    """A frame that cannot be read or decoded.

    Attributes:
        folder: the video's frame folder, or its video file (:func:`is_video_file`).
        index: 0-based frame index (the file is ``image_{index+1:05d}.jpg``; for a video file,
            the first frame asked for).
        path: the frame file, or the video file.
        reason: what went wrong.
    """

    def __init__(self, folder: str, index: int, reason: str = "unreadable") -> None:
        self.folder = folder
        self.index = index
        self.path = folder if is_video_file(folder) else frame_path(folder, index)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def frame_path(folder: str, index0: int) -> str:
    """Path of the frame with 0-based index ``index0`` (on disk: ``image_%05d.jpg``, 1-based)."""
    return os.path.join(folder, FRAME_TEMPLATE.format(index0 + 1))


def _read_bytes(folder: str, index: int) -> torch.Tensor:
    path = frame_path(folder, index)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        reason = "missing frame" if os.path.isdir(folder) else "frame folder does not exist"
        raise FrameError(folder, index, reason) from None
    except OSError as err:
        raise FrameError(folder, index, f"cannot read ({err.strerror})") from None
    if not data:
        raise FrameError(folder, index, "empty file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _reason(err: Exception) -> str:
    """The last part of a torchvision C++ error ("decode_jpeg, <file>:<line>, <reason>")."""
    return str(err).rsplit(", ", 1)[-1]


def load_frames(folder: str, indices: Sequence[int]) -> torch.Tensor:
    """Read and decode the given frames (each file once) into a uint8 tensor ``(len, 3, H, W)``
    in channels-last memory (``decode_jpeg``'s own layout; use :func:`gather_frames` to pick
    frames out of it).

    The encoded frames are decoded in one batched ``decode_jpeg`` call; if that fails, the frames
    are decoded one at a time to name the culprit. Grayscale/CMYK JPEGs are converted to RGB.

    A video file (:func:`is_video_file`) is decoded by :func:`datasets.video.load_video_frames`
    (the same layout; its docstring says how the frame index stays exact).

    Raises:
        FrameError: a frame is missing, unreadable, corrupt, or differs in size from the others.
    """
    if is_video_file(folder):
        from datasets.video import load_video_frames  # here: datasets.video imports this module
        return load_video_frames(folder, indices)
    index_list = [int(i) for i in indices]
    if not index_list:
        raise ValueError(f"{folder}: no frame indices to load")
    encoded = [_read_bytes(folder, i) for i in index_list]
    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB)
    except RuntimeError as batch_err:
        for i, data in zip(index_list, encoded):
            try:
                decode_jpeg(data, mode=ImageReadMode.RGB)
            except RuntimeError as err:
                raise FrameError(folder, i, f"corrupt JPEG ({_reason(err)})") from None
        raise FrameError(folder, index_list[0], f"batch decode failed ({_reason(batch_err)})") \
            from None
    shape = images[0].shape
    for i, image in zip(index_list, images):
        if image.shape != shape:
            raise FrameError(folder, i, f"frame size {tuple(image.shape[1:])} differs from "
                             f"{tuple(shape[1:])} of frame {index_list[0] + 1}")
    # decode_jpeg's (3, H, W) images are HWC in memory: stacking them as such is a plain copy
    # (an NCHW stack transposes every frame), and channels-last is what the uint8 resize wants.
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def load_clip(folder: str, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Load the frames ``indices`` (0-based, repeats allowed) of a frame folder or a video file
    (:func:`load_frames`) as a uint8 clip ``(T, 3, H, W)``.

    Each distinct frame is read and decoded once (a clip clipped to its last frame, or the
    overlapping local/global clips of docs/method.md §1, repeat indices).

    Raises:
        FrameError: see :func:`load_frames`.
    """
    index = torch.as_tensor(indices, dtype=torch.long)
    unique, inverse = torch.unique(index, return_inverse=True)
    return gather_frames(load_frames(folder, unique.tolist()), inverse)


def gather_frames(frames: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``frames[index]`` for uint8 frames ``(N, 3, H, W)`` as :func:`load_frames` returns them,
    as one ``index_select`` of whole HWC frames (advanced indexing of an NCHW-shaped tensor is
    several times slower on CPU); the result is channels-last like its input."""
    return frames.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
