# Generation algorithm. Each image gets a smooth two-colour gradient background with low-frequency blotches, then
# objects built from polygons in unit coordinates (person: head circle + body outline; car, bus, truck, train,
# bicycle, motorcycle, boat, airplane: each a different outline with wheels; dog, chair, sports ball as
# distractors), scaled and placed with limited overlap (except deliberate person-in-front-of-car scenes). Every
# polygon is rasterised with pycocotools and the object is painted exactly on those pixels, so the annotation
# written (the same polygons, the same rasteriser) matches the drawing pixel for pixel. Crowds are several small
# persons painted together and annotated as one uncompressed RLE of their union. Pixel noise goes on last; ~10%
# of images are turned grayscale (single-channel JPEG), ~10% hold no person or vehicle. Everything comes from
# numpy Generators seeded with ``seed``, so equal arguments give byte-identical files. Label defects, when asked
# for, are applied to the training annotations afterwards with their own generator, so the clean images and the
# validation split do not depend on ``plant_defects``.
"""A small synthetic COCO 2017 layout dataset for tests, the demo and first runs without a COCO download."""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from coco_seg.atomic import replace_folder
from coco_seg.categories import CATEGORY_BY_NAME, COCO_CATEGORIES, VEHICLE_TYPES
from coco_seg.config import user_cache_dir

SAMPLE_DIR_ENV_VAR = "COCO_SEG_SAMPLE_DIR"
# Written last by ensure_generated_sample: a folder without it is not a finished sample.
COMPLETION_MARKER = "generated-sample-complete.json"
PLANTED_DEFECTS_FILE = "planted_defects.json"
DEFECT_KINDS: tuple[str, ...] = ("missing_person", "person_as_car", "shifted_mask")
MIN_VISIBLE_SHARE = 0.005  # a planted defect's object shows at least 0.5 % of the image

MIN_IMAGES = 8
MIN_VALIDATION_IMAGES = 4
VALIDATION_SHARE = 0.25
GRAYSCALE_SHARE = 0.10
BACKGROUND_ONLY_SHARE = 0.10
CROWD_SHARE = 0.15
JPEG_QUALITY = 90
MIN_INSTANCE_AREA = 12  # pixels; a smaller instance (clipped away by the frame) is not annotated

SPLIT_FOLDERS = {"training": "train2017", "validation": "val2017"}
ANNOTATION_FILES = {"training": "annotations/instances_train2017.json",
                    "validation": "annotations/instances_val2017.json"}

PERSON_ID = CATEGORY_BY_NAME["person"].id
CAR_ID = CATEGORY_BY_NAME["car"].id
VEHICLE_IDS = frozenset(CATEGORY_BY_NAME[name].id for name in VEHICLE_TYPES)
# Vehicles other than car, drawn in rotation over the whole dataset so that every type appears.
OTHER_VEHICLES: tuple[str, ...] = ("bus", "truck", "bicycle", "motorcycle", "boat", "airplane", "train")
DISTRACTORS: tuple[str, ...] = ("dog", "chair", "sports ball")


@dataclass(frozen=True)
class SampleSummary:
    out_dir: Path
    training_images: int
    validation_images: int
    training_annotations: int
    validation_annotations: int
    planted_defects: int
    seed: int


# --------------------------------------------------------------------------------------------------- geometry

class Part(NamedTuple):
    points: np.ndarray       # (N, 2) x, y; unit coordinates in a shape builder, pixels once placed
    role: str                # palette entry that paints it
    annotated: bool = True   # False: a detail (window, hubcap) painted inside the outline, not part of the mask


def _circle(cx: float, cy: float, radius: float, vertices: int = 16) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _bar(start: Sequence[float], end: Sequence[float], thickness: float) -> np.ndarray:
    """A thick line segment as a quad (COCO polygons have no stroke width)."""
    p, q = np.asarray(start, float), np.asarray(end, float)
    direction = q - p
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9) * thickness / 2
    return np.array([p + normal, q + normal, q - normal, p - normal])


def _ring(cx: float, cy: float, outer: float, inner: float, segments: int = 12) -> list[np.ndarray]:
    """A tyre as quads around a hole: COCO polygons cannot have holes, several polygons per instance can."""
    quads = []
    step = 2.0 * math.pi / segments
    for k in range(segments):
        a0, a1 = k * step - 0.02, (k + 1) * step + 0.02  # slight overlap so the union has no hairline gaps
        quads.append(np.array([[cx + outer * math.cos(a0), cy + outer * math.sin(a0)],
                               [cx + outer * math.cos(a1), cy + outer * math.sin(a1)],
                               [cx + inner * math.cos(a1), cy + inner * math.sin(a1)],
                               [cx + inner * math.cos(a0), cy + inner * math.sin(a0)]]))
    return quads


def _jitter(points: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    return points + rng.uniform(-amount, amount, points.shape)


# ---------------------------------------------------------------------------------------------------- shapes
# Builders return parts in unit coordinates (y down); placement normalises them to their own bounding box.

def _person(rng: np.random.Generator) -> list[Part]:
    c = 0.21
    half_body = [(-0.05, 0.19), (0.05, 0.19), (0.15, 0.23), (0.20, 0.52), (0.145, 0.54), (0.115, 0.32),
                 (0.11, 0.58), (0.13, 1.0), (0.035, 1.0), (0.0, 0.65)]
    # The left half mirrors the right (without the neck and crotch points, which lie on the axis).
    outline = half_body + [(-dx, y) for dx, y in reversed(half_body[2:-1])]
    body = _jitter(np.array([(c + dx, y) for dx, y in outline]), rng, 0.008)
    return [Part(body, "body"),
            Part(_circle(c, 0.1, 0.095 * rng.uniform(0.9, 1.1)), "skin"),
            Part(_box(c - 0.2, 0.585, c + 0.2, 1.0), "pants", annotated=False)]


def _car(rng: np.random.Generator) -> list[Part]:
    roof = rng.uniform(0.05, 0.12)
    body = np.array([(0.0, 0.34), (0.2, 0.29), (0.3, roof), (0.72, roof), (0.84, 0.29), (1.0, 0.34),
                     (1.0, 0.6), (0.0, 0.6)])
    parts = [Part(_jitter(body, rng, 0.01), "body")]
    for x in (0.22, 0.78):
        parts += [Part(_circle(x, 0.6, 0.1), "tyre"), Part(_circle(x, 0.6, 0.04, 8), "metal", annotated=False)]
    parts += [Part(np.array([(0.33, roof + 0.04), (0.49, roof + 0.04), (0.49, 0.28), (0.25, 0.28)]), "glass", False),
              Part(np.array([(0.53, roof + 0.04), (0.69, roof + 0.04), (0.79, 0.28), (0.53, 0.28)]), "glass", False)]
    return parts


def _bus(rng: np.random.Generator) -> list[Part]:
    parts = [Part(np.array([(0.0, 0.02), (0.96, 0.02), (1.0, 0.08), (1.0, 0.36), (0.0, 0.36)]), "body")]
    parts += [Part(_circle(x, 0.36, 0.07), "tyre") for x in (0.17, 0.8)]
    parts += [Part(_box(0.04 + k * 0.14, 0.07, 0.14 + k * 0.14, 0.18), "glass", False) for k in range(6)]
    parts.append(Part(_box(0.89, 0.08, 0.96, 0.31), "glass", False))
    parts.append(Part(_box(0.0, 0.24, 0.86, 0.27), "trim", False))
    return parts


def _truck(rng: np.random.Generator) -> list[Part]:
    cab = rng.uniform(0.12, 0.18)
    body = np.array([(0.0, 0.0), (0.68, 0.0), (0.68, cab), (0.86, cab), (0.98, 0.28), (1.0, 0.42), (0.0, 0.42)])
    parts = [Part(body, "body"), Part(_box(0.0, 0.0, 0.66, 0.4), "trim", False)]
    parts += [Part(_circle(x, 0.42, 0.09), "tyre") for x in (0.14, 0.33, 0.84)]
    parts.append(Part(np.array([(0.72, cab + 0.04), (0.85, cab + 0.04), (0.93, 0.27), (0.72, 0.27)]), "glass", False))
    return parts


def _train(rng: np.random.Generator) -> list[Part]:
    parts = [Part(_box(0.0, 0.03, 0.33, 0.22), "body"), Part(_box(0.32, 0.15, 0.36, 0.18), "body"),
             Part(_box(0.35, 0.03, 0.68, 0.22), "body"), Part(_box(0.67, 0.15, 0.71, 0.18), "body"),
             Part(np.array([(0.70, 0.0), (0.9, 0.0), (1.0, 0.1), (1.0, 0.22), (0.70, 0.22)]), "body")]
    parts += [Part(_circle(x, 0.225, 0.025, 10), "tyre") for x in (0.05, 0.28, 0.4, 0.63, 0.75, 0.95)]
    for x0 in (0.02, 0.37):
        parts += [Part(_box(x0 + k * 0.08, 0.06, x0 + k * 0.08 + 0.05, 0.12), "glass", False) for k in range(4)]
    parts.append(Part(_box(0.88, 0.03, 0.95, 0.1), "glass", False))
    parts.append(Part(_box(0.0, 0.16, 1.0, 0.19), "trim", False))
    return parts


def _bicycle(rng: np.random.Generator) -> list[Part]:
    rear, front, crank, seat, head = (0.2, 0.6), (0.8, 0.6), (0.48, 0.6), (0.4, 0.26), (0.74, 0.22)
    width = 0.045
    parts = [Part(quad, "tyre") for hub in (rear, front) for quad in _ring(*hub, 0.2, 0.15)]
    parts += [Part(_bar(a, b, width), "body") for a, b in
              ((rear, seat), (seat, crank), (crank, rear), (seat, head), (head, crank), (head, front))]
    parts += [Part(_bar((0.34, 0.24), (0.47, 0.24), 0.05), "body"), Part(_bar((0.7, 0.14), (0.84, 0.14), 0.04), "body"),
              Part(_bar(head, (0.76, 0.14), 0.04), "body")]
    return parts


def _motorcycle(rng: np.random.Generator) -> list[Part]:
    body = np.array([(0.2, 0.42), (0.35, 0.22), (0.55, 0.2), (0.62, 0.3), (0.72, 0.12), (0.78, 0.1), (0.8, 0.14),
                     (0.74, 0.3), (0.84, 0.46), (0.7, 0.48), (0.45, 0.44), (0.3, 0.48)])
    parts = [Part(_circle(x, 0.46, 0.16), "tyre") for x in (0.18, 0.82)]
    parts.append(Part(_jitter(body, rng, 0.01), "body"))
    parts += [Part(_circle(x, 0.46, 0.06, 10), "metal", False) for x in (0.18, 0.82)]
    parts.append(Part(_bar((0.75, 0.13), (0.83, 0.02), 0.035), "metal"))  # handlebar, joined to the body
    return parts


def _boat(rng: np.random.Generator) -> list[Part]:
    sail_top = rng.uniform(0.0, 0.12)
    return [Part(np.array([(0.0, 0.45), (1.0, 0.45), (0.86, 0.7), (0.12, 0.7)]), "body"),
            Part(_box(0.28, 0.3, 0.58, 0.46), "trim"),
            Part(np.array([(0.62, sail_top), (0.62, 0.43), (0.92, 0.43)]), "sail"),
            Part(_box(0.0, 0.5, 1.0, 0.54), "trim", False)]


def _airplane(rng: np.random.Generator) -> list[Part]:
    fuselage = np.array([(0.0, 0.25), (0.08, 0.18), (0.85, 0.17), (0.97, 0.2), (1.0, 0.25), (0.95, 0.3),
                         (0.1, 0.32)])
    parts = [Part(fuselage, "body"),
             Part(np.array([(0.0, 0.0), (0.07, 0.0), (0.2, 0.19), (0.05, 0.2)]), "trim"),
             Part(np.array([(0.35, 0.27), (0.56, 0.27), (0.46, 0.47), (0.38, 0.47)]), "body")]
    parts += [Part(_box(0.25 + k * 0.06, 0.2, 0.28 + k * 0.06, 0.23), "glass", False) for k in range(9)]
    parts.append(Part(np.array([(0.88, 0.19), (0.95, 0.21), (0.95, 0.23), (0.88, 0.23)]), "glass", False))
    return parts


def _dog(rng: np.random.Generator) -> list[Part]:
    parts = [Part(_circle(0.0, 0.0, 1.0, 18) * [0.3, 0.13] + [0.45, 0.35], "body"),
             Part(_circle(0.82, 0.2, 0.11), "body"),
             Part(np.array([(0.88, 0.2), (1.0, 0.24), (1.0, 0.3), (0.88, 0.31)]), "body"),
             Part(np.array([(0.74, 0.12), (0.8, 0.02), (0.84, 0.14)]), "dark"),
             Part(_bar((0.17, 0.3), (0.03, 0.14), 0.04), "body")]
    parts += [Part(_bar((x, 0.4), (x + lean, 0.7), 0.06), "body")
              for x, lean in ((0.24, -0.02), (0.34, 0.01), (0.57, -0.01), (0.66, 0.02))]
    parts.append(Part(_circle(0.99, 0.26, 0.03, 8), "dark", False))
    return parts


def _chair(rng: np.random.Generator) -> list[Part]:
    return [Part(_box(0.04, 0.0, 0.13, 1.0), "body"), Part(_box(0.04, 0.5, 0.6, 0.58), "body"),
            Part(_box(0.5, 0.58, 0.57, 1.0), "body"), Part(_box(0.07, 0.06, 0.11, 0.46), "dark", False)]


def _sports_ball(rng: np.random.Generator) -> list[Part]:
    return [Part(_circle(0.5, 0.5, 0.5, 20), "body"), Part(_circle(0.5, 0.5, 0.16, 5), "dark", False),
            Part(_circle(0.15, 0.3, 0.12, 6), "dark", False), Part(_circle(0.8, 0.75, 0.12, 6), "dark", False)]


def _hsv(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
    red, green, blue = colorsys.hsv_to_rgb((hue_degrees % 360.0) / 360.0, saturation, value)
    return np.array([blue, green, red]) * 255.0  # OpenCV channel order


TYRE = (0.0, 0.0, 0.12)
GLASS = (205.0, 0.25, 0.8)
METAL = (0.0, 0.0, 0.7)


def _palette_person(rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    # Red-to-magenta clothes: a colour family no vehicle uses, so colour alone separates person from car.
    hue, saturation, value = rng.uniform(-35.0, 8.0), rng.uniform(0.65, 0.95), rng.uniform(0.6, 0.95)
    return {"body": (hue, saturation, value), "pants": (hue, saturation, value * 0.55),
            "skin": (rng.uniform(15.0, 28.0), rng.uniform(0.3, 0.5), rng.uniform(0.65, 0.9))}


def _palette(hue: tuple[float, float], saturation: tuple[float, float], value: tuple[float, float],
             **extra: tuple[float, float, float]) -> Callable[[np.random.Generator], dict]:
    def draw(rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
        body = (rng.uniform(*hue), rng.uniform(*saturation), rng.uniform(*value))
        trim = (body[0], body[1] * 0.8, body[2] * 0.7)
        return {"body": body, "trim": trim, "tyre": TYRE, "glass": GLASS, "metal": METAL,
                "dark": (body[0], body[1], body[2] * 0.35), **extra}
    return draw


class ShapeKind(NamedTuple):
    build: Callable[[np.random.Generator], list[Part]]
    palette: Callable[[np.random.Generator], dict[str, tuple[float, float, float]]]
    sized_by: str                  # "height" or "width": the image dimension the size range is a share of
    size: tuple[float, float]      # share of that image dimension


SHAPES: dict[str, ShapeKind] = {
    "person": ShapeKind(_person, _palette_person, "height", (0.35, 0.7)),
    "car": ShapeKind(_car, _palette((205.0, 235.0), (0.6, 0.95), (0.45, 0.9)), "width", (0.22, 0.38)),
    "bus": ShapeKind(_bus, _palette((44.0, 56.0), (0.75, 0.95), (0.8, 0.95)), "width", (0.42, 0.6)),
    "truck": ShapeKind(_truck, _palette((95.0, 135.0), (0.55, 0.9), (0.4, 0.8)), "width", (0.36, 0.55)),
    "train": ShapeKind(_train, _palette((165.0, 185.0), (0.5, 0.85), (0.45, 0.8)), "width", (0.62, 0.85)),
    "bicycle": ShapeKind(_bicycle, _palette((30.0, 45.0), (0.7, 0.95), (0.6, 0.9)), "width", (0.2, 0.3)),
    "motorcycle": ShapeKind(_motorcycle, _palette((265.0, 300.0), (0.5, 0.85), (0.4, 0.75)), "width", (0.22, 0.32)),
    "boat": ShapeKind(_boat, _palette((20.0, 35.0), (0.5, 0.75), (0.35, 0.6), sail=(50.0, 0.08, 0.95),
                                      trim=(0.0, 0.0, 0.92)), "width", (0.28, 0.42)),
    "airplane": ShapeKind(_airplane, _palette((0.0, 360.0), (0.0, 0.08), (0.78, 0.95),
                                              trim=(220.0, 0.7, 0.5), glass=(0.0, 0.0, 0.2)), "width", (0.4, 0.6)),
    "dog": ShapeKind(_dog, _palette((20.0, 35.0), (0.45, 0.7), (0.3, 0.55)), "width", (0.16, 0.26)),
    "chair": ShapeKind(_chair, _palette((25.0, 40.0), (0.45, 0.65), (0.35, 0.6)), "height", (0.25, 0.4)),
    "sports ball": ShapeKind(_sports_ball, _palette((0.0, 360.0), (0.0, 0.05), (0.9, 1.0),
                                                    dark=(0.0, 0.0, 0.1)), "width", (0.06, 0.1)),
}


# ------------------------------------------------------------------------------------------------- rendering

def _luma(bgr: np.ndarray) -> float:
    return float(0.114 * bgr[0] + 0.587 * bgr[1] + 0.299 * bgr[2])


def _contrasting(bgr: np.ndarray, background_luma: float, gap: float = 40.0) -> np.ndarray:
    """Shift a colour's brightness away from the background's, so the object also shows in grayscale images."""
    luma = _luma(bgr)
    if abs(luma - background_luma) >= gap:
        return bgr
    up = luma >= background_luma and background_luma + gap <= 235.0 or background_luma - gap < 20.0
    target = background_luma + gap if up else background_luma - gap
    return np.clip(bgr + (target - luma), 0.0, 255.0)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    # Muted colours (low saturation) so the saturated object colours stand out, as they would to a CNN on photos.
    first = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.85))
    second = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.85))
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    image = first[None, None, :] * (1 - ramp[..., None]) + second[None, None, :] * ramp[..., None]
    # Blotches mostly in brightness, a little in colour: strong colour noise would reach object saturation.
    grid = (int(rng.integers(3, 7)), int(rng.integers(3, 7)))
    coarse = rng.normal(0.0, 16.0, (*grid, 1)) + rng.normal(0.0, 6.0, (*grid, 3))
    image += cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 7.0, (max(height // 6, 2), max(width // 6, 2))).astype(np.float32)
    image += cv2.resize(grain, (width, height), interpolation=cv2.INTER_LINEAR)[..., None]
    return np.clip(image, 0.0, 255.0).astype(np.float32)


def _rasterise(polygons: list[list[float]], height: int, width: int) -> tuple[dict, np.ndarray]:
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return rle, mask_utils.decode(rle).astype(bool)


@dataclass
class _Placed:
    parts: list[Part]  # pixel coordinates, clipped to the image, rounded as written to JSON
    box: tuple[float, float, float, float]  # x0, y0, x1, y1


def _to_pixels(parts: list[Part], *, scale: float, x0: float, y0: float, flip: bool, width: int,
               height: int) -> list[Part]:
    outline = np.concatenate([p.points for p in parts if p.annotated])
    low, high = outline.min(axis=0), outline.max(axis=0)
    placed = []
    for part in parts:
        u = (high[0] - part.points[:, 0]) if flip else (part.points[:, 0] - low[0])
        v = part.points[:, 1] - low[1]
        points = np.stack([x0 + u * scale, y0 + v * scale], axis=1)
        # Rounded before rasterising: the painted pixels come from exactly the numbers written to JSON.
        points = np.round(np.clip(points, [0.0, 0.0], [width, height]), 1)
        if part.annotated and _polygon_area(points) < 0.5:
            continue  # clipped away by the frame
        placed.append(Part(points, part.role, part.annotated))
    return placed


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _extent(parts: list[Part]) -> tuple[float, float]:
    outline = np.concatenate([p.points for p in parts if p.annotated])
    return tuple(outline.max(axis=0) - outline.min(axis=0))  # type: ignore[return-value]


def _scale_for(kind: ShapeKind, parts: list[Part], rng: np.random.Generator, width: int, height: int,
               size_share: float | None = None) -> float:
    extent_w, extent_h = _extent(parts)
    share = rng.uniform(*kind.size) if size_share is None else size_share
    scale = share * (height if kind.sized_by == "height" else width) / (extent_h if kind.sized_by == "height"
                                                                         else extent_w)
    return min(scale, 0.9 * width / extent_w, 0.9 * height / extent_h)


def _overlap_too_much(box: tuple[float, float, float, float], taken: list[tuple[float, float, float, float]],
                      limit: float) -> bool:
    for other in taken:
        inter_w = min(box[2], other[2]) - max(box[0], other[0])
        inter_h = min(box[3], other[3]) - max(box[1], other[1])
        if inter_w > 0 and inter_h > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if inter_w * inter_h > limit * smaller:
                return True
    return False


class _Canvas:
    """One image being drawn: the float BGR pixels, the boxes taken, the annotations made."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.rng, self.width, self.height = rng, width, height
        self.pixels = _background(rng, width, height)
        self.taken: list[tuple[float, float, float, float]] = []

    def shape(self, name: str, *, scale: float | None = None,
              at: tuple[float, float] | None = None, overlap_limit: float = 0.2) -> _Placed | None:
        """Build, size and place one ``name`` shape (at a free spot unless ``at`` = top-left corner is given)."""
        kind = SHAPES[name]
        parts = kind.build(self.rng)
        scale = _scale_for(kind, parts, self.rng, self.width, self.height) if scale is None else scale
        extent_w, extent_h = _extent(parts)
        box_w, box_h = extent_w * scale, extent_h * scale
        flip = bool(self.rng.integers(2))
        for _ in range(1 if at is not None else 40):
            if at is not None:
                x0 = float(np.clip(at[0], 0.0, max(self.width - box_w, 0.0)))
                y0 = float(np.clip(at[1], 0.0, max(self.height - box_h, 0.0)))
            else:
                x0 = self.rng.uniform(1.0, max(self.width - box_w - 1.0, 1.5))
                y0 = self.rng.uniform(1.0, max(self.height - box_h - 1.0, 1.5))
            box = (x0, y0, x0 + box_w, y0 + box_h)
            if at is None and _overlap_too_much(box, self.taken, overlap_limit):
                continue
            self.taken.append(box)
            pixel_parts = _to_pixels(parts, scale=scale, x0=x0, y0=y0, flip=flip, width=self.width,
                                     height=self.height)
            return _Placed(pixel_parts, box)
        return None

    def paint(self, placed: _Placed, palette: dict[str, tuple[float, float, float]]) -> tuple[list[list[float]],
                                                                                               dict, np.ndarray]:
        """Paint ``placed`` on exactly its rasterised pixels; return (polygons, RLE, mask) of its outline."""
        outline = [p for p in placed.parts if p.annotated]
        polygons = [p.points.reshape(-1).tolist() for p in outline]
        rle, instance_mask = _rasterise(polygons, self.height, self.width)
        x0, y0, x1, y1 = placed.box
        region = self.pixels[int(y0):max(int(math.ceil(y1)), int(y0) + 1), int(x0):max(int(math.ceil(x1)), int(x0) + 1)]
        background_luma = _luma(region.reshape(-1, 3).mean(axis=0))
        colours = {role: _contrasting(_hsv(*hsv), background_luma) for role, hsv in palette.items()}
        # Parts of one role are painted together, in the order the roles first appear (tyres over the body, ...).
        for role in dict.fromkeys(p.role for p in placed.parts):
            role_polygons = [p.points.reshape(-1).tolist() for p in placed.parts if p.role == role]
            _, role_mask = _rasterise(role_polygons, self.height, self.width)
            role_mask &= instance_mask  # details never leak outside the annotated outline
            rows, cols = np.nonzero(role_mask)
            if rows.size == 0:
                continue
            # A top-to-bottom shading so that a flat fill still has some structure.
            shade = 1.1 - 0.22 * (rows - y0) / max(y1 - y0, 1.0)
            self.pixels[rows, cols] = np.clip(colours[role][None, :] * shade[:, None], 0.0, 255.0)
        return polygons, rle, instance_mask

    def finish(self, *, grayscale: bool) -> np.ndarray:
        noisy = self.pixels + self.rng.normal(0.0, 4.0, self.pixels.shape)
        image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        # Drawn in colour, then reduced to one channel: a real COCO grayscale image is stored single-channel.
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if grayscale else image


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    boundaries = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(boundaries).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


# ---------------------------------------------------------------------------------------------------- images

@dataclass(frozen=True)
class _ImagePlan:
    image_id: int
    width: int
    height: int
    background_only: bool
    grayscale: bool
    with_crowd: bool
    person_over_car: bool


def _coco_area(segmentation: Any, rle: dict) -> float:
    """``area`` as COCO writes it: the polygons' own area (shoelace formula), an RLE's pixel count."""
    if isinstance(segmentation, list):
        total = 0.0
        for polygon in segmentation:
            xs, ys = np.asarray(polygon[0::2], np.float64), np.asarray(polygon[1::2], np.float64)
            total += abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))) / 2
        return total
    return float(mask_utils.area(rle))


class _Annotations:
    """Annotation records with ids unique over the whole dataset."""

    def __init__(self) -> None:
        self.next_id = 1
        self.vehicle_turn = 0  # rotates through OTHER_VEHICLES over the whole dataset

    def record(self, image_id: int, category: str, segmentation: Any, rle: dict, *, crowd: bool) -> dict | None:
        if int(mask_utils.area(rle)) < MIN_INSTANCE_AREA:
            return None
        annotation = {"id": self.next_id, "image_id": image_id, "category_id": CATEGORY_BY_NAME[category].id,
                      "segmentation": segmentation, "area": _coco_area(segmentation, rle),
                      "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(crowd)}
        self.next_id += 1
        return annotation


def _draw_image(plan: _ImagePlan, rng: np.random.Generator, ledger: _Annotations) -> tuple[np.ndarray, list[dict]]:
    canvas = _Canvas(rng, plan.width, plan.height)
    annotations: list[dict] = []

    def add(name: str, placed: _Placed | None) -> _Placed | None:
        if placed is None or not any(p.annotated for p in placed.parts):
            return None
        polygons, rle, _ = canvas.paint(placed, SHAPES[name].palette(rng))
        annotation = ledger.record(plan.image_id, name, polygons, rle, crowd=False)
        if annotation is not None:
            annotations.append(annotation)
        return placed

    if plan.background_only:
        if rng.random() < 0.5:  # a background-only image may still hold a non-target object
            name = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
            add(name, canvas.shape(name))
        return canvas.finish(grayscale=plan.grayscale), annotations

    # The other vehicle goes first, on an empty canvas, so that even a train always fits and every type appears.
    if rng.random() < 0.7:
        name = OTHER_VEHICLES[ledger.vehicle_turn % len(OTHER_VEHICLES)]
        ledger.vehicle_turn += 1
        add(name, canvas.shape(name))
    if plan.with_crowd:
        _draw_crowd(canvas, plan, rng, ledger, annotations)
    cars = int(rng.integers(0, 3))
    persons = int(rng.choice([0, 1, 1, 2, 2, 3]))
    if plan.person_over_car:
        cars, persons = max(cars, 1), max(persons, 1)
    if cars + persons == 0:
        persons = 1
    placed_cars = [p for p in (add("car", canvas.shape("car")) for _ in range(cars)) if p is not None]
    if plan.person_over_car and placed_cars:
        # A pedestrian in front of a car: drawn after it, overlapping a quarter to half of its side.
        car = placed_cars[0].box
        car_w, car_h = car[2] - car[0], car[3] - car[1]
        person_parts = _person(rng)
        scale = min(rng.uniform(1.3, 1.8) * car_h, 0.9 * plan.height) / _extent(person_parts)[1]
        person_w, person_h = _extent(person_parts)[0] * scale, _extent(person_parts)[1] * scale
        centre = car[0] + car_w * (rng.uniform(0.1, 0.35) if rng.random() < 0.5 else rng.uniform(0.65, 0.9))
        top = car[3] - person_h + rng.uniform(0.0, 0.15) * car_h
        add("person", canvas.shape("person", scale=scale, at=(centre - person_w / 2, top)))
        persons -= 1
    for _ in range(persons):
        add("person", canvas.shape("person"))
    if rng.random() < 0.3:
        name = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        add(name, canvas.shape(name))
    return canvas.finish(grayscale=plan.grayscale), annotations


def _draw_crowd(canvas: _Canvas, plan: _ImagePlan, rng: np.random.Generator, ledger: _Annotations,
                annotations: list[dict]) -> None:
    """A tight group of small persons, annotated (as COCO does) as one iscrowd region in uncompressed RLE."""
    members = int(rng.integers(4, 8))
    member_h = rng.uniform(0.18, 0.28) * plan.height
    member_w = 0.42 * member_h
    group_w = min(member_w * (1 + 0.55 * (members - 1)), 0.9 * plan.width)
    group_h = member_h * 1.12
    for _ in range(40):
        x0 = rng.uniform(1.0, max(plan.width - group_w - 1.0, 1.5))
        y0 = rng.uniform(1.0, max(plan.height - group_h - 1.0, 1.5))
        if not _overlap_too_much((x0, y0, x0 + group_w, y0 + group_h), canvas.taken, 0.2):
            break  # else the last spot tried is used anyway: a crowd partly behind a vehicle is fine
    canvas.taken.append((x0, y0, x0 + group_w, y0 + group_h))
    union = np.zeros((plan.height, plan.width), dtype=bool)
    step = (group_w - member_w) / max(members - 1, 1)
    for k in range(members):
        parts = _person(rng)
        scale = member_h / _extent(parts)[1]
        at = (x0 + k * step, y0 + rng.uniform(0.0, 0.12) * member_h)
        placed = canvas.shape("person", scale=scale, at=at)
        canvas.taken.pop()  # the group's box already stands for its members
        if placed is not None:
            union |= canvas.paint(placed, _palette_person(rng))[2]
    rle_field = _uncompressed_rle(union)
    rle = mask_utils.frPyObjects(rle_field, plan.height, plan.width)
    annotation = ledger.record(plan.image_id, "person", rle_field, rle, crowd=True)
    if annotation is not None:
        annotations.append(annotation)


# ----------------------------------------------------------------------------------------------------- plans

def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _split_plans(rng: np.random.Generator, image_ids: list[int], image_size: tuple[int, int] | None
                 ) -> list[_ImagePlan]:
    count = len(image_ids)
    order = [int(i) for i in rng.permutation(count)]
    background = set(order[:max(1, _round_half_up(BACKGROUND_ONLY_SHARE * count))])
    rest = order[len(background):]
    grayscale = set(rest[:max(1, _round_half_up(GRAYSCALE_SHARE * count))])  # grayscale images do have objects
    crowd = set(rest[len(grayscale):len(grayscale) + max(1, _round_half_up(CROWD_SHARE * count))])
    forced_overlap = rest[-1]  # at least one person-over-car scene per split
    plans = []
    for index, image_id in enumerate(image_ids):
        if image_size is None:
            width, height = int(rng.integers(160, 321)), int(rng.integers(120, 241))
        else:
            width, height = image_size
        plans.append(_ImagePlan(image_id=image_id, width=width, height=height,
                                background_only=index in background, grayscale=index in grayscale,
                                with_crowd=index in crowd,
                                person_over_car=index == forced_overlap or bool(rng.random() < 0.3)))
    return plans


# --------------------------------------------------------------------------------------------------- defects

def _supports(kind: str, annotation: dict) -> bool:
    if annotation["iscrowd"]:
        return False
    if kind == "shifted_mask":  # person or car: a defect on a class the default config does not map is invisible
        return annotation["category_id"] in (PERSON_ID, CAR_ID)
    return annotation["category_id"] == PERSON_ID


def _visible_pixels(target: dict, image_annotations: list[dict], width: int, height: int) -> int:
    """Pixels of ``target`` not painted over by objects drawn after it (annotation ids follow drawing order)."""
    def rle(annotation: dict) -> dict:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        return mask_utils.frPyObjects(segmentation, height, width)

    covering = [rle(a) for a in image_annotations if a["id"] > target["id"]]
    visible = mask_utils.decode(rle(target)).astype(bool)
    if covering:
        visible &= ~mask_utils.decode(mask_utils.merge(covering)).astype(bool)
    return int(visible.sum())


def _shift(annotation: dict, rng: np.random.Generator, width: int, height: int) -> None:
    """Move the polygon by 25–40% of its box, towards the image centre so that most of it stays in frame."""
    x, y, w, h = annotation["bbox"]
    fraction = rng.uniform(0.25, 0.4)
    dx = fraction * w * (1 if x + w / 2 < width / 2 else -1)
    dy = fraction * h * (1 if y + h / 2 < height / 2 else -1)
    shifted = []
    for polygon in annotation["segmentation"]:
        points = np.asarray(polygon, dtype=float).reshape(-1, 2) + [dx, dy]
        points = np.round(np.clip(points, [0.0, 0.0], [width, height]), 1)
        if _polygon_area(points) >= 0.5:
            shifted.append(points.reshape(-1).tolist())
    rle = mask_utils.merge(mask_utils.frPyObjects(shifted, height, width))
    annotation.update(segmentation=shifted, area=float(mask_utils.area(rle)),
                      bbox=[float(v) for v in mask_utils.toBbox(rle)])


def _plant_defects(images: list[dict], annotations: list[dict], *, fraction: float,
                   rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """Corrupt round-half-up(fraction × eligible) training images, one defect each, kinds in rotation.

    Eligible: images with a non-crowd person or car of which at least MIN_VISIBLE_SHARE of the image is visible
    (not painted over by later objects); the defect goes to the most visible such object. The images are taken in a seeded random order; each slot
    takes the next image that supports its kind (a person for missing_person / person_as_car), falling back to
    shifted_mask, which every eligible image supports.
    """
    by_image: dict[int, list[dict]] = {}
    for annotation in annotations:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    sizes = {image["id"]: (image["width"], image["height"]) for image in images}
    # Only objects that can be seen take a defect: one hidden behind others could not be found by anyone.
    visible = {a["id"]: _visible_pixels(a, by_image[image_id], *sizes[image_id])
               for image_id, anns in by_image.items() for a in anns
               if not a["iscrowd"] and a["category_id"] in (PERSON_ID, CAR_ID)}

    def usable(kind: str, annotation: dict) -> bool:
        width, height = sizes[annotation["image_id"]]
        return _supports(kind, annotation) and visible[annotation["id"]] >= MIN_VISIBLE_SHARE * width * height

    eligible = sorted(image_id for image_id, anns in by_image.items() if any(usable("shifted_mask", a) for a in anns))
    remaining = [eligible[i] for i in rng.permutation(len(eligible))]
    deleted: set[int] = set()
    planted = []
    for slot in range(_round_half_up(fraction * len(eligible))):
        kind = DEFECT_KINDS[slot % len(DEFECT_KINDS)]
        image_id = next((i for i in remaining if any(usable(kind, a) for a in by_image[i])), None)
        if image_id is None:
            kind, image_id = "shifted_mask", remaining[0]
        remaining.remove(image_id)
        candidates = [a for a in by_image[image_id] if usable(kind, a)]
        target = max(candidates, key=lambda a: (visible[a["id"]], -a["id"]))
        if kind == "missing_person":
            deleted.add(target["id"])
        elif kind == "person_as_car":
            target["category_id"] = CAR_ID
        else:
            _shift(target, rng, *sizes[image_id])
        planted.append({"image_id": image_id, "split": "training", "kind": kind, "annotation_id": target["id"]})
    kept = [a for a in annotations if a["id"] not in deleted]
    return kept, sorted(planted, key=lambda entry: entry["image_id"])


# ------------------------------------------------------------------------------------------------------ files

def _coco_document(images: list[dict], annotations: list[dict]) -> dict[str, Any]:
    return {
        "info": {"description": "coco-seg generated sample: synthetic shapes in the COCO 2017 layout",
                 "version": "1.0", "year": 2017, "contributor": "coco-seg", "url": "",
                 "date_created": "2017/09/01"},  # fixed: the files must not change from run to run
        "licenses": [{"id": 1, "name": "Generated data, no restrictions", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in COCO_CATEGORIES],
    }


def _write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")


def _earlier_sample_files(out_dir: Path) -> list[str]:
    """The files an earlier make_sample wrote in ``out_dir`` before output folders had a manifest: recognised by
    its planted_defects.json, listed from its annotation files. [] when ``out_dir`` holds no such sample."""
    if not (out_dir / PLANTED_DEFECTS_FILE).is_file():
        return []
    names = [*ANNOTATION_FILES.values(), PLANTED_DEFECTS_FILE, COMPLETION_MARKER]
    for split, annotation_file in ANNOTATION_FILES.items():
        try:
            document = json.loads((out_dir / annotation_file).read_text(encoding="utf-8"))
            names += [f"{SPLIT_FOLDERS[split]}/{image['file_name']}" for image in document["images"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # what cannot be listed is not vouched for: it counts as the user's
    return names


def _validate(images: int, seed: int, plant_defects: float, image_size: tuple[int, int] | None) -> None:
    if isinstance(images, bool) or not isinstance(images, int) or images < MIN_IMAGES:
        raise ValueError(f"images must be an integer >= {MIN_IMAGES} (total over both splits), got {images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(plant_defects, bool) or not isinstance(plant_defects, (int, float)) \
            or not 0.0 <= plant_defects <= 1.0:
        raise ValueError(f"plant_defects must be a fraction between 0 and 1, got {plant_defects!r}")
    if image_size is not None:
        if len(image_size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 64 for v in image_size):
            raise ValueError(f"image_size must be (width, height), integers >= 64, got {image_size!r}")


def make_sample(out_dir: Path, *, images: int = 48, seed: int = 0, plant_defects: float = 0.0,
                image_size: tuple[int, int] | None = None) -> SampleSummary:
    """Write the generated dataset under ``out_dir`` (COCO 2017 layout) and return what was written.

    ``images`` is the total over both splits: validation gets max(4, round-half-up(25%)), training the rest.
    ``image_size`` is (width, height) for every image; None draws widths 160–320 and heights 120–240.
    ``plant_defects`` is the share of eligible training images given one label defect (see planted_defects.json).
    """
    _validate(images, seed, plant_defects, image_size)
    out_dir = Path(out_dir)
    written: list[SampleSummary] = []
    # built beside out_dir and swapped in whole: a regenerated sample never keeps a stale image or label of the
    # earlier one, a kill leaves the earlier one intact, and a folder holding a user's files is refused untouched
    replace_folder(out_dir, lambda folder: written.append(_write_sample(folder, images=images, seed=seed,
                                                                          plant_defects=plant_defects,
                                                                          image_size=image_size)),
                   known=_earlier_sample_files(out_dir))
    return dataclasses.replace(written[0], out_dir=out_dir)


def _write_sample(out_dir: Path, *, images: int, seed: int, plant_defects: float,
                  image_size: tuple[int, int] | None) -> SampleSummary:
    validation_count = max(MIN_VALIDATION_IMAGES, _round_half_up(VALIDATION_SHARE * images))
    training_count = images - validation_count
    # Sparse, unordered-looking ids (as in COCO) so that nothing can confuse an image id with a list index.
    id_rng = np.random.default_rng([seed, 0])
    all_ids = [int(i) + 1 for i in id_rng.choice(999_999, size=images, replace=False)]
    split_ids = {"training": sorted(all_ids[:training_count]), "validation": sorted(all_ids[training_count:])}

    ledger = _Annotations()
    documents: dict[str, tuple[list[dict], list[dict]]] = {}
    for split_number, (split, ids) in enumerate(split_ids.items(), start=1):
        folder = out_dir / SPLIT_FOLDERS[split]
        folder.mkdir(parents=True, exist_ok=True)
        plans = _split_plans(np.random.default_rng([seed, split_number]), ids, image_size)
        image_records, annotations = [], []
        for plan in plans:
            pixels, image_annotations = _draw_image(plan, np.random.default_rng([seed, split_number, plan.image_id]),
                                                    ledger)
            file_name = f"{plan.image_id:012d}.jpg"
            ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {file_name}")
            (folder / file_name).write_bytes(encoded.tobytes())
            image_records.append({"id": plan.image_id, "file_name": file_name, "width": plan.width,
                                  "height": plan.height, "license": 1, "coco_url": "", "flickr_url": "",
                                  "date_captured": "2017-01-01 00:00:00"})
            annotations += image_annotations
        documents[split] = (image_records, annotations)

    training_records, training_annotations = documents["training"]
    training_annotations, planted = _plant_defects(training_records, training_annotations, fraction=plant_defects,
                                                   rng=np.random.default_rng([seed, 0xDEFEC7]))
    documents["training"] = (training_records, training_annotations)
    for split, (image_records, annotations) in documents.items():
        _write_json(out_dir / ANNOTATION_FILES[split], _coco_document(image_records, annotations))
    _write_json(out_dir / PLANTED_DEFECTS_FILE, {"planted": planted, "fraction": float(plant_defects)})
    return SampleSummary(out_dir=out_dir, training_images=training_count, validation_images=validation_count,
                         training_annotations=len(training_annotations),
                         validation_annotations=len(documents["validation"][1]), planted_defects=len(planted),
                         seed=seed)


# -------------------------------------------------------------------------------------------- default sample

def generated_sample_dir() -> Path:
    """Where the default generated dataset lives: ``$COCO_SEG_SAMPLE_DIR``, else ~/.cache/coco-seg/..."""
    configured = os.environ.get(SAMPLE_DIR_ENV_VAR, "").strip()
    if configured:
        return Path(configured).expanduser()
    return user_cache_dir() / "generated-sample-v1"


def _check_marker(folder: Path, wanted: dict[str, int]) -> None:
    recorded = json.loads((folder / COMPLETION_MARKER).read_text(encoding="utf-8"))
    if {key: recorded.get(key) for key in wanted} != wanted:
        raise RuntimeError(f"the generated sample in {folder} was made with {recorded}, not {wanted}; delete the "
                           f"folder or point ${SAMPLE_DIR_ENV_VAR} elsewhere")


def ensure_generated_sample(*, images: int = 48, seed: int = 0) -> Path:
    """The default generated dataset, made on first use; safe when several processes ask at once.

    Each process generates into its own temporary folder beside the target and renames it into place (atomic);
    a process that loses the race deletes its copy and uses the winner's. The completion marker is written last,
    so a folder without it was never finished.
    """
    target = generated_sample_dir()
    wanted = {"images": images, "seed": seed}
    if (target / COMPLETION_MARKER).is_file():
        _check_marker(target, wanted)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        make_sample(scratch, images=images, seed=seed)
        _write_json(scratch / COMPLETION_MARKER, {**wanted, "version": 1})
        os.rename(scratch, target)
    except OSError as error:
        shutil.rmtree(scratch, ignore_errors=True)
        if (target / COMPLETION_MARKER).is_file():  # another process finished first
            _check_marker(target, wanted)
            return target
        raise RuntimeError(f"cannot create the generated sample at {target}: {error} (if the folder exists but is "
                           f"not a finished sample, delete it)") from error
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target
