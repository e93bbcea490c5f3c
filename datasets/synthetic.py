"""A small labelled synthetic video data set whose class is carried by motion only.

Each video shows a few textured objects (random shape — disc or square —, size, colour, checker
texture and start position) over a random smooth textured background; the objects glide across
the frame on a torus (wrapping at the borders), each at its own mean speed.

Time has an arrow that does not depend on the class: each object's speed follows a sawtooth
(it accelerates from 0.25× to 1.75× its mean speed over ``_PERIOD`` frames, then drops back),
with a random phase per object. Played backwards, the objects decelerate and then jump to full
speed, which no forward video does, so telling a clip from its time-reversed copy is possible
(the temporal-order probe of docs/method.md §5) but needs motion features.

The **class is the elevation of the motion**: class ``c`` of ``C`` moves at
``φ_c = -90° + 180°·c/(C-1)`` from the horizontal (image y points down; ± a quarter of the class
spacing), to the left or to the right at random. With 4 classes: ``up``, ``rise30`` (30° above
the horizontal), ``fall30``, ``down`` (:func:`class_names`).

* **Appearance can be made not to last** (``segment`` > 0, default 0 = one look per video):
  every ``segment`` frames the background and the objects' looks are re-drawn while the objects
  keep moving, so two clips of one video taken at different times (the positives of docs/method.md
  §3.1) share their motion, not their looks. With one look per video the instance contrast can
  be solved by the static background alone, which carries no class information (docs/demo.md).
* **Appearance can be shared** (``looks`` > 0, default 0 = a look of its own per video): the
  background and object looks come from a pool of ``looks`` appearances, each video taking one at
  random whatever its class. Then a video's appearance tells it apart from only part of the
  others, and the instance contrast has to use the motion to separate the rest; with a look of
  its own per video the contrast is solved by appearance and learns nothing about the class
  (measured: docs/demo.md).
* Everything else is drawn independently of the class, and positions are uniform on the torus at
  every time step, so **a single frame carries no class information**; only features that see
  time can solve it.
* **Reversing a clip in time maps the direction of class c to that of C-1-c** (up ↔ down) and
  turns acceleration into deceleration, so a temporal-order probe must look at the speed pattern.
* The classes are **invariant to a horizontal flip** (left and right are drawn at random within a
  class), so the flip of the docs/method.md §1 augmentations does not corrupt the labels, as left-vs-right
  classes would.

Layout written under ``out_dir`` (the docs/method.md §1 frame-folder layout, relative CSV paths)::

    frames/<class>/vid_00000/image_00001.jpg …
    pretrain.csv   path,num_frames           (the train split)
    train.csv      path,num_frames,label
    val.csv        path,num_frames,label
    classes.txt    "<id> <name>" per line
    synthetic.json manifest of the parameters, written last

Rendering is vectorised over videos, objects and frames in chunks of videos; JPEGs are encoded
with ``torchvision.io.encode_jpeg`` in one call per chunk. Deterministic from ``seed``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg

from datasets.frames import frame_path

MANIFEST = "synthetic.json"
_VERSION = 5
_CHUNK = 8  # videos rendered at once (small chunks stay in cache)
_THREADS = 4
_OBJECTS = 3
_PERIOD = 12.0  # frames of one accelerate-then-reset speed cycle
_SPEED = (2.0, 5.0)  # mean object speed range, pixels per frame at 64 px (scaled with the size)
# Background brightness range. A full-range (0.15–0.85) background kept a supervised R3D-18 x0.25
# at chance for its first 300 steps; with this one it left chance within 90 (docs/demo.md).
_BACKGROUND = (0.35, 0.65)


def elevations(num_classes: int) -> list[float]:
    """Motion elevation of each class in degrees, from -90 (up) to +90 (down), evenly spaced."""
    return [-90.0 + 180.0 * c / (num_classes - 1) for c in range(num_classes)]


def class_names(num_classes: int) -> list[str]:
    """Class names: ``up``/``down`` for ±90°, ``riseX``/``fallX`` for X° above/below horizontal."""
    def name(phi: float) -> str:
        if abs(phi) == 90:
            return "up" if phi < 0 else "down"
        return "horizontal" if phi == 0 else f"{'rise' if phi < 0 else 'fall'}{abs(phi):g}"
    return [name(phi) for phi in elevations(num_classes)]


def _draw_videos(num_videos: int, size: int, num_classes: int, segments: int,
                 generator: torch.Generator, looks: int = 0) -> dict[str, torch.Tensor]:
    """All random parameters, drawn up front so rendering in chunks does not change them.

    Motion parameters are per object, ``(N, O, …)``; appearance parameters are per appearance
    segment and object, ``(N, segments, O, …)`` (background: ``(N, segments, 3, 6, 6)``). With
    ``looks`` > 0 the appearances are ``looks`` draws shared out to the videos by a uniform random
    index (``"look"``), independent of the class; with 0 every video has its own.
    """
    n, o, s = num_videos, _OBJECTS, segments

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    labels = torch.arange(n) % num_classes
    spacing = math.pi / (num_classes - 1)
    elevation = torch.tensor(elevations(num_classes)).deg2rad()[labels] \
        + uniform(n, low=-spacing / 4, high=spacing / 4)
    leftward = torch.rand(n, generator=generator) < 0.5
    horizontal = elevation.cos() * (1 - 2 * leftward.float())
    speed = uniform(n, o, low=_SPEED[0], high=_SPEED[1]) * size / 64
    motion = {
        "labels": labels,
        "velocity": torch.stack([speed * elevation.sin()[:, None],
                                 speed * horizontal[:, None]], -1),  # (N, O, [dy, dx])
        "start": uniform(n, o, 2, high=size),
        "phase": uniform(n, o),
    }
    pool = looks or n
    appearance = {
        "radius": uniform(pool, s, o, low=0.08, high=0.16) * size,
        "square": torch.rand(pool, s, o, generator=generator) < 0.5,
        "colour": uniform(pool, s, o, 3),
        "cell": uniform(pool, s, o, low=0.03, high=0.08) * size,
        "background": uniform(pool, s, 3, 6, 6, low=_BACKGROUND[0], high=_BACKGROUND[1]),
    }
    look = torch.randint(looks, (n,), generator=generator) if looks else torch.arange(n)
    return {**motion, "look": look, **{k: v[look] for k, v in appearance.items()}}


def _sprites(p: dict[str, torch.Tensor], box: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each object drawn once in a ``box × box`` patch centred on it.

    Returns alpha and alpha·texture, ``(N, O, box, box)`` each (texture: a checker with a random
    cell size, so it moves with the object).
    """
    offset = torch.arange(box, dtype=torch.float32) - box // 2
    dy, dx = offset[:, None], offset[None, :]
    radius = p["radius"][:, :, None, None]
    distance = torch.where(p["square"][:, :, None, None], torch.maximum(dy.abs(), dx.abs()),
                           torch.sqrt(dy ** 2 + dx ** 2))
    alpha = (radius + 0.5 - distance).clamp(0, 1)  # anti-aliased edge
    cell = p["cell"][:, :, None, None]
    checker = torch.remainder(torch.floor(dy / cell) + torch.floor(dx / cell), 2)
    return alpha, alpha * (0.55 + 0.45 * checker)


def _render(p: dict[str, torch.Tensor], frames: int, size: int) -> torch.Tensor:
    """Render a chunk of videos → uint8 ``(N, F, 3, S, S)``, vectorised over videos and frames.

    Object ``k`` at frame ``t`` sits at ``round(start + velocity·Σ_{u<t} ramp(u))`` on the torus,
    ``ramp`` being the sawtooth speed factor of the module docstring (mean 1). The frames are cut
    into equal appearance segments, each rendered as a video of its own (its own background and
    object looks) with the positions of its frames.
    """
    n, o = p["start"].shape[:2]
    segments = p["radius"].shape[1]
    length = math.ceil(frames / segments)
    t = torch.arange(segments * length, dtype=torch.float32)
    ramp = 0.25 + 1.5 * torch.frac(t / _PERIOD + p["phase"][:, :, None])  # (N, O, F')
    travelled = torch.cumsum(ramp, dim=-1) - ramp[..., :1]  # 0 at the first frame
    position = torch.round(p["start"][:, :, None] + p["velocity"][:, :, None] * travelled[..., None]
                           ).long()  # (N, O, F', 2)
    position = position.view(n, o, segments, length, 2).transpose(1, 2).flatten(0, 1)
    looks = {k: p[k].flatten(0, 1) for k in ("radius", "square", "colour", "cell", "background")}
    video = _composite(looks, position, size)  # (N·segments, length, 3, S, S)
    return video.view(n, segments * length, 3, size, size)[:, :frames]


def _composite(p: dict[str, torch.Tensor], position: torch.Tensor, size: int) -> torch.Tensor:
    """Draw objects with looks ``p`` (``(V, O, …)``) at ``position`` ``(V, O, F, 2)`` over their
    backgrounds → uint8 ``(V, F, 3, S, S)``.

    Only the patch around each object is touched: one ``gather`` of the wrapped patch pixels of
    every frame, an alpha blend, one ``scatter_`` back; objects are composited back to front.
    """
    n, o, frames = position.shape[:3]
    box = 2 * math.ceil(float(p["radius"].max()) + 1.0)
    background = F.interpolate(p["background"], size=(size, size), mode="bicubic",
                               align_corners=False).clamp(0, 1)
    video = background[:, None].expand(n, frames, 3, size, size).contiguous()
    patch = torch.arange(box) - box // 2
    rows = torch.remainder(position[..., 0:1] + patch, size)  # (N, O, F, box)
    cols = torch.remainder(position[..., 1:2] + patch, size)
    pixels = (rows[..., :, None] * size + cols[..., None, :]).flatten(-2)  # (N, O, F, box²)
    alpha, shaded = (s.flatten(-2)[:, :, None, None] for s in _sprites(p, box))  # (N, O, 1, 1, box²)
    colour = p["colour"].view(n, o, 1, 3, 1)
    flat = video.view(n, frames, 3, size * size)
    for k in range(o):
        index = pixels[:, k, :, None].expand(n, frames, 3, box * box)
        region = flat.gather(3, index)
        flat.scatter_(3, index, region * (1 - alpha[:, k]) + shaded[:, k] * colour[:, k])
    return (video * 255).round_().to(torch.uint8)


def _manifest_params(num_videos: int, frames: int, size: int, num_classes: int, seed: int,
                     val_fraction: float, segment: int, looks: int) -> dict:
    return {"version": _VERSION, "num_videos": num_videos, "frames": frames, "size": size,
            "num_classes": num_classes, "seed": seed, "val_fraction": val_fraction,
            "segment": segment, "looks": looks}


def make_synthetic(out_dir: str | os.PathLike, num_videos: int = 300, frames: int = 48,
                   size: int = 64, num_classes: int = 4, seed: int = 0, val_fraction: float = 0.25,
                   segment: int = 0, looks: int = 0, force: bool = False) -> dict[str, str]:
    """Write the synthetic motion-class data set (see the module doc) and return its CSV paths.

    Skips the work when ``out_dir`` already holds a complete set made with the same parameters
    (``synthetic.json``), unless ``force``.

    Args:
        out_dir: output folder (created).
        num_videos: number of videos, classes assigned round-robin (balanced).
        frames: frames per video (pretraining with 2 clips of 16 needs > 32).
        size: frame side in pixels.
        num_classes: motion elevations (``C - 1 - c`` is the time reversal of class ``c``).
        seed: RNG seed; the same parameters give byte-identical files.
        val_fraction: fraction of each class held out in ``val.csv``.
        segment: frames per appearance segment (background and object looks re-drawn, motion
            continuing); 0 keeps one appearance for the whole video.
        looks: size of the pool of appearances shared by all videos (each video takes one at
            random, whatever its class); 0 gives every video its own.
        force: regenerate even if a matching set exists.

    Returns:
        ``{"pretrain": …, "train": …, "val": …}`` absolute CSV paths.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if num_videos < 2 * num_classes:
        raise ValueError(f"num_videos ({num_videos}) must be >= 2 * num_classes ({num_classes})")
    if frames < 2 or size < 16:
        raise ValueError(f"need frames >= 2 and size >= 16, got frames={frames}, size={size}")
    if segment < 0 or looks < 0:
        raise ValueError(f"segment and looks must be >= 0, got segment={segment}, looks={looks}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    csvs = {name: os.path.join(out_dir, f"{name}.csv") for name in ("pretrain", "train", "val")}
    params = _manifest_params(num_videos, frames, size, num_classes, seed, val_fraction, segment,
                              looks)
    manifest = os.path.join(out_dir, MANIFEST)
    if not force and os.path.isfile(manifest) and all(map(os.path.isfile, csvs.values())):
        with open(manifest, encoding="utf-8") as handle:
            if json.load(handle).get("params") == params:
                return csvs

    for stale in [manifest, *csvs.values()]:
        if os.path.exists(stale):
            os.remove(stale)
    frames_root = os.path.join(out_dir, "frames")
    shutil.rmtree(frames_root, ignore_errors=True)
    names = class_names(num_classes)
    generator = torch.Generator().manual_seed(seed)
    segments = math.ceil(frames / segment) if segment else 1
    drawn = _draw_videos(num_videos, size, num_classes, segments, generator, looks)
    labels = drawn["labels"].tolist()
    rel_paths = [f"frames/{names[c]}/vid_{i:05d}" for i, c in enumerate(labels)]

    def write_chunk(begin: int) -> None:
        video = _render({k: v[begin:begin + _CHUNK] for k, v in drawn.items()}, frames, size)
        encoded = encode_jpeg(list(video.flatten(0, 1)), quality=90)
        for v, rel in enumerate(rel_paths[begin:begin + _CHUNK]):
            folder = os.path.join(out_dir, rel)
            os.makedirs(folder)
            for t in range(frames):
                with open(frame_path(folder, t), "wb") as handle:
                    handle.write(encoded[v * frames + t].numpy().tobytes())

    # Chunks are independent (all randomness was drawn above): threads overlap encoding and I/O.
    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(write_chunk, range(0, num_videos, _CHUNK)))

    rank = torch.arange(num_videos) // num_classes  # rank of a video within its class
    per_class = torch.bincount(drawn["labels"], minlength=num_classes)
    held_out = (per_class * val_fraction).round().long().clamp(min=1)
    is_val = rank < torch.minimum(held_out, per_class - 1)[drawn["labels"]]  # >= 1 train each
    rows = {"train": [], "val": []}
    for rel, label, val in zip(rel_paths, labels, is_val.tolist()):
        rows["val" if val else "train"].append(f"{rel},{frames},{label}\n")
    _write_lines(csvs["train"], rows["train"])
    _write_lines(csvs["val"], rows["val"])
    _write_lines(csvs["pretrain"], [row.rsplit(",", 1)[0] + "\n" for row in rows["train"]])
    _write_lines(os.path.join(out_dir, "classes.txt"),
                 [f"{c} {name}\n" for c, name in enumerate(names)])
    with open(manifest, "w", encoding="utf-8") as handle:
        json.dump({"params": params, "classes": names, "train": len(rows["train"]),
                   "val": len(rows["val"])}, handle, indent=2)
    return csvs


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
