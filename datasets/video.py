"""Video files as clip sources (docs/method.md §1): frame index ``k`` is the ``k``-th decoded frame.

A CSV row may name a video file (``.mp4 .avi .mkv .webm .mov``) instead of a frame folder;
:func:`datasets.frames.load_frames` / :func:`~datasets.frames.load_clip` hand such a path to
:func:`load_video_frames`, which returns the same uint8 layout as the JPEG path, so every
transform is shared. Decoding uses PyAV (its wheels bundle FFmpeg).

**Exact frame index.** The index of a frame is its position in a full decode from the start.
To avoid decoding from the start for every clip, the decoder maps indices to timestamps on the
stream's frame grid, ``pts(k) = pts(frame 0) + k · step`` with ``step = 1 / (rate · time_base)``,
seeks to the keyframe at or before the first needed frame and decodes forward only as far as the
last needed frame. The mapping is used only where it is verified:

* frame 0 is decoded to learn its timestamp (it is not always the stream's ``start_time``: an
  MPEG-4 .avi with B-frames starts at 1);
* where the container states a frame count and a duration (mp4, mov, avi), the duration must be
  that count times ``step`` (a variable-frame-rate file, or one with a gap, fails this);
* after the seek, the first keyframe and every following frame must sit on the grid, each exactly
  one step after the previous one (no gap, no duplicate), and the keyframe at or before the
  first needed frame.

Anything else (no timestamps, an off-grid or irregular timestamp, a seek that overshoots twice, a
stream that ends early) falls back to decoding from the start and counting frames, which is
always exact and only slower. A window that starts within :data:`SEEK_AHEAD` frames of the start
is decoded from the start directly.

**Errors.** Every problem with a file (missing, empty, not a video, truncated, corrupt data, no
decoder for its codec, fewer frames than asked for) raises :class:`~datasets.frames.FrameError`
naming the file, so the skip/strict policy of :mod:`datasets.base` treats it like a bad frame.
Each call opens and closes its own container with one decoding thread: nothing is shared across
the ``fork`` of DataLoader workers, and no FFmpeg thread exists at fork time.

:func:`count_frames` gives the exact number of frames a full decode yields (used by
``scripts/build_csv.py --videos_root`` and ``scripts/reencode_videos.py``): by counting packets
where one packet is one frame (H.264/HEVC, checked below), else by decoding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from typing import NamedTuple

import av
import torch
from av.video.reformatter import VideoReformatter

from datasets.frames import FrameError

SEEK_AHEAD = 8  # a window starting within this many frames of frame 0 is decoded from frame 0
_GRID_TOLERANCE = Fraction(1, 4)  # |pts - grid| allowed, in steps (millisecond time bases)
_SEEK_TRIES = 3
_MAX_LEADING = 16  # non-key frames accepted before the first keyframe after a seek
# codecs whose packets (in mp4/mov/mkv/webm/avi) each hold exactly one frame, so that counting
# the non-empty packets counts the decoded frames; tests/test_data_video.py checks it
PACKET_PER_FRAME = frozenset({"h264", "hevc"})
_FIX = ("re-download or re-encode it (scripts/reencode_videos.py), or leave it out of the CSV "
        "(scripts/build_csv.py --videos_root counts the decodable frames)")


class _Grid(NamedTuple):
    """The frame grid of a constant-frame-rate stream: frame ``k`` at ``origin + k * step``."""

    origin: int
    step: Fraction

    def pts(self, index: float) -> int:
        """A timestamp between frame ``index`` and the next (inclusive of ``index``)."""
        return self.origin + int((index + Fraction(1, 2)) * self.step)

    def index(self, pts: int | None) -> int | None:
        """The frame index of ``pts``, or None where it is not on the grid."""
        if pts is None:
            return None
        k = round((pts - self.origin) / self.step)
        return k if abs(pts - self.origin - k * self.step) <= self.step * _GRID_TOLERANCE else None


@contextmanager
def _video_errors(path: str, index: int) -> Iterator[None]:
    """Turn FFmpeg/OS errors into a :class:`FrameError` that names the file and the fix."""
    try:
        yield
    except FileNotFoundError:
        raise FrameError(path, index, "video file does not exist") from None
    except (av.error.FFmpegError, OSError, ValueError) as err:
        detail = getattr(err, "strerror", None) or str(err)
        raise FrameError(path, index, f"cannot decode the video ({type(err).__name__}: {detail}); "
                         f"{_FIX}") from None


def _open(path: str) -> av.container.InputContainer:
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError("empty file")
    return av.open(path)


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream, set to decode in this thread only."""
    if not container.streams.video:
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise ValueError("no decoder for its codec in this FFmpeg build (unsupported codec)")
    stream.thread_count = 1
    return stream


def _grid(stream: av.video.stream.VideoStream, first_pts: int | None) -> _Grid | None:
    """The stream's frame grid, or None where timestamps cannot map frame indices (see module)."""
    rate = stream.average_rate or stream.guessed_rate
    if first_pts is None or not rate or not stream.time_base:
        return None
    step = 1 / (Fraction(rate) * Fraction(stream.time_base))
    if stream.frames > 0 and stream.duration and \
            abs(stream.duration - stream.frames * step) > step / 2:
        return None
    return _Grid(first_pts, step)


class _Collector:
    """Keeps the wanted frames, by index, as RGB in one ``(U, H, W, 3)`` uint8 tensor (wanted
    order). One colour converter serves all frames of a call (a frame's own ``to_ndarray`` sets
    up a new swscale context each time, which costs more than decoding a 128-px frame); its
    conversion is the one ``scripts/extract_frames.py`` makes."""

    def __init__(self, path: str, wanted: Sequence[int]) -> None:
        self.path = path
        self.position = {k: i for i, k in enumerate(wanted)}
        self.last = wanted[-1]
        self.out: torch.Tensor | None = None
        self.converter = VideoReformatter()

    def add(self, index: int, frame: av.VideoFrame) -> bool:
        """Store ``frame`` if wanted; True once the last wanted frame is in."""
        where = self.position.get(index)
        if where is not None:
            if self.out is None:
                self.out = torch.empty(len(self.position), frame.height, frame.width, 3,
                                       dtype=torch.uint8)
            if (frame.height, frame.width) != tuple(self.out.shape[1:3]):
                raise FrameError(self.path, index, f"frame size {frame.width}x{frame.height} "
                                 "differs from that of the frames before it")
            rgb = self.converter.reformat(frame, format="rgb24").to_ndarray()
            self.out[where] = torch.from_numpy(rgb)
        return index >= self.last


def _from_start(frames: Iterator[av.VideoFrame], collector: _Collector, path: str) -> torch.Tensor:
    """Count frames from frame 0 (exact whatever the timestamps) up to the last wanted one."""
    count = 0
    for frame in frames:
        if collector.add(count, frame):
            assert collector.out is not None
            return collector.out
        count += 1
    raise FrameError(path, collector.last, f"frame {collector.last + 1} was asked for, but the "
                     f"video has only {count} decodable frames (is num_frames in the CSV too "
                     "large? scripts/build_csv.py --videos_root counts them)")


def _after_seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                grid: _Grid, collector: _Collector, first: int) -> torch.Tensor | None:
    """Seek to the keyframe at or before frame ``first`` and decode on to the last wanted frame,
    checking every timestamp against the grid; None where the check fails (see the module)."""
    target = first
    for _ in range(_SEEK_TRIES):
        container.seek(grid.pts(target), backward=True, any_frame=False, stream=stream)
        expected, leading = None, 0
        for frame in container.decode(stream):
            index = grid.index(frame.pts)
            if expected is None:
                if not frame.key_frame:  # leading pictures of an open GOP: not decodable here
                    leading += 1
                    if leading > _MAX_LEADING:
                        return None
                    continue
                if index is None:
                    return None
                if index > first:  # landed past the first frame (B-frame reordering): back off
                    target = max(0, target - 2 * (index - first) - 2)
                    break
                expected = index
            if index != expected:
                return None
            if collector.add(index, frame):
                return collector.out
            expected += 1
        else:
            return None  # the stream ended early: the decode from the start counts and reports
    return None


def load_video_frames(path: str, indices: Sequence[int]) -> torch.Tensor:
    """Decode frames ``indices`` (0-based: the k-th decoded frame; any order, repeats allowed)
    of the video file ``path`` into uint8 ``(len, 3, H, W)`` in channels-last memory, the layout
    of :func:`datasets.frames.load_frames` (docs/method.md §1). Seeks and decodes only the needed span,
    with the index checks of the module docstring.

    Raises:
        FrameError: the file is missing, empty, not a video, corrupt, has no decoder, or has
            fewer frames than asked for.
    """
    index_list = [int(i) for i in indices]
    if not index_list:
        raise ValueError(f"{path}: no frame indices to load")
    wanted = sorted(set(index_list))
    if wanted[0] < 0:
        raise FrameError(path, wanted[0], f"negative frame index {wanted[0]}")
    with _video_errors(path, wanted[0]):
        frames = _decode(path, wanted)
    if wanted != index_list:
        position = {k: i for i, k in enumerate(wanted)}
        frames = frames.index_select(0, torch.tensor([position[i] for i in index_list]))
    return frames.permute(0, 3, 1, 2)


def _decode(path: str, wanted: list[int]) -> torch.Tensor:
    """``(len(wanted), H, W, 3)`` uint8: seek where verified, else decode from the start."""
    with _open(path) as container:
        stream = _video_stream(container)
        decoded = container.decode(stream)
        first = next(decoded, None)
        if first is None:
            raise FrameError(path, wanted[0], f"no decodable frame; {_FIX}")
        grid = _grid(stream, first.pts)
        if grid is None or wanted[0] < SEEK_AHEAD:
            return _from_start(_chain(first, decoded), _Collector(path, wanted), path)
        out = _after_seek(container, stream, grid, _Collector(path, wanted), wanted[0])
        if out is not None:
            return out
    with _open(path) as container:
        return _from_start(container.decode(_video_stream(container)), _Collector(path, wanted),
                           path)


def _chain(first: av.VideoFrame, rest: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
    yield first
    yield from rest


def count_frames(path: str) -> int:
    """The exact number of frames a full decode of ``path`` yields (docs/method.md §1 ``num_frames``).

    Counts packets where that is exact: an H.264/HEVC stream whose packets are all intact (none
    corrupt, none marked to discard), whose first packet is a keyframe and whose last packet ends
    inside the file (not truncated). Otherwise (MPEG-4 part 2 .avi, VP8/VP9, …) decodes the
    whole stream without converting the frames. The container's own frame count is never used.

    Raises:
        FrameError: the file cannot be opened or decoded, or has no frames.
    """
    with _video_errors(path, 0):
        count = _count_packets(path)
        if count is None:
            count = _count_decoded(path)
    if count == 0:
        raise FrameError(path, 0, f"no decodable frame; {_FIX}")
    return count


def _count_packets(path: str) -> int | None:
    """Non-empty packets of the video stream where each is one frame (see :func:`count_frames`),
    else None."""
    size = os.path.getsize(path)
    with _open(path) as container:
        stream = _video_stream(container)
        if stream.codec_context.name not in PACKET_PER_FRAME:
            return None
        count = 0
        for packet in container.demux(stream):
            if not packet.size:
                continue  # the end-of-stream flush packet
            if packet.is_corrupt or packet.is_discard or (count == 0 and not packet.is_keyframe):
                return None
            if packet.pos is None or packet.pos < 0 or packet.pos + packet.size > size:
                return None
            count += 1
        return count


def _count_decoded(path: str) -> int:
    """Frames of a full decode (no colour conversion)."""
    with _open(path) as container:
        return sum(1 for _ in container.decode(_video_stream(container)))
