"""Synthetic abdominal CT phantoms: the bundle's embedded default dataset.

A phantom is a synthetic stand-in built from simple shapes (bent, tapered and cut ellipsoids, tubes)
for the body wall, spine, vessels, bowel and the BTCV organs, shaped after textbook adult anatomy (a
liver with a large right lobe and a thin left lobe across the midline, a crescent spleen against the
left ribs, bean-shaped kidneys with a hilum, the right lower, a J-shaped stomach with gas in its fundus,
a pancreas from the duodenal C-loop to the splenic hilum, a pear-shaped gallbladder under the liver, V-
or Y-shaped adrenals above the kidneys), with each organ's volume drawn per case from the published
adult range, and rendered with portal-venous-phase Hounsfield units, correlated texture and white
noise. It is the bundle's default data (smoke training, demos) and the anatomy source for domain-
randomised training (``Phantom.tissue``). Organ geometry and its sources live in
``scripts.phantom_anatomy``; this module places the organs for one case, draws them and writes NIfTI
datasets.

World coordinates are RAS+ millimetres (+x patient right, +y anterior, +z superior); array axis 0, 1,
2 run along +x, +y, +z and the volume is centred on the origin.
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts import phantom_anatomy as A
from scripts.phantom_anatomy import BTCV_LABELS, TISSUES, Blob, Tube, jitter_blob, jitter_tube
from text_pipeline.files import write_atomically

__all__ = [
    "PHANTOM_VERSION",
    "MIN_FIELD_OF_VIEW_MM",
    "CASE_SEED_STRIDE",
    "BTCV_LABELS",
    "TISSUE_NAMES",
    "Phantom",
    "generate_phantom",
    "write_phantom_dataset",
]

logger = logging.getLogger(__name__)

PHANTOM_VERSION = "1.2.0"
"""Bump whenever the generated voxels change; cached datasets with another version are regenerated."""
MIN_FIELD_OF_VIEW_MM = (260.0, 190.0, 240.0)
"""Smallest field of view (x, y, z; shape times spacing) that holds every labelled organ. The body outline
(up to about 340 x 270 mm across) may be cut off by fields of view smaller than the default 336 x 336 mm."""
MIN_SHAPE = 16
CASE_SEED_STRIDE = 100_003
"""Case ``i`` of a dataset with seed ``s`` uses ``generate_phantom(s * CASE_SEED_STRIDE + i)``."""

_NAMES = tuple(TISSUES)
TISSUE_NAMES = _NAMES
"""Tissue names in the order of their ids in ``Phantom.tissue`` (0 is air)."""
_TID = {name: i for i, name in enumerate(_NAMES)}
_LABEL_LUT = np.array([t.label for t in TISSUES.values()], np.uint8)
_HU = np.array([t.hu for t in TISSUES.values()], np.float32)
_HU_JITTER = np.array([t.jitter for t in TISSUES.values()], np.float32)
_TEXTURE = np.array([t.texture for t in TISSUES.values()], np.float32)
_PAINTABLE = np.array([name not in A.PROTECTED_TISSUES for name in _NAMES])


@dataclass(frozen=True, eq=False)  # arrays do not compare to a single bool
class Phantom:
    """One synthetic CT case.

    Attributes:
        image: Hounsfield units, ``np.int16``, shape ``(X, Y, Z)``.
        label: BTCV label ids (see ``BTCV_LABELS``), ``np.uint8``, same shape.
        affine: 4x4 voxel-to-world (RAS+ mm) matrix, ``np.float64``.
        tissue: tissue ids (index into ``TISSUE_NAMES``), ``np.uint8``, same shape: the finer label map
            that domain-randomised training renders new images from (``scripts.synthesis``).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tissue: np.ndarray


class _Canvas:
    """Tissue-id volume plus helpers to paint shapes inside their world bounding boxes."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.axes = tuple(((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, spacing))
        self.tissue = np.full(shape, _TID["air"], np.uint8)

    def region(self, lo: Sequence[float], hi: Sequence[float]):
        """Slices and broadcastable world coordinates of the voxels inside [lo, hi], or None."""
        return A.window(self.axes, lo, hi)

    def paint(self, name: str, mask: np.ndarray, slices: tuple[slice, ...], protect: bool = True) -> None:
        view = self.tissue[slices]
        if protect:
            mask = mask & _PAINTABLE[view]
        view[mask] = _TID[name]


def _paint_blob(canvas: _Canvas, blob: Blob, layers: Sequence[tuple[str, float]]) -> None:
    """Paint ``blob``; ``layers`` are (tissue, normalised radius <= 1), outermost first."""
    found = canvas.region(np.subtract(blob.centre, blob.reach()), np.add(blob.centre, blob.reach()))
    if found is not None:
        r = blob.radius(*found[1])
        for name, level in layers:
            canvas.paint(name, r <= level, found[0])


def _paint_tube(canvas: _Canvas, tube: Tube, lumen: str, wall: str = "", gas: str = "", gas_y: float = np.inf) -> None:
    """Paint a tube; hollow tubes get ``wall`` around ``lumen`` content, with ``gas`` above the supine
    air-fluid level ``gas_y`` (anterior is up)."""
    found = canvas.region(*tube.bounds())
    if found is None:
        return
    slices, (x, y, z) = found
    sdf = tube.distance(x, y, z)
    if tube.wall <= 0:
        canvas.paint(lumen, sdf <= 0, slices)
        return
    canvas.paint(wall, sdf <= 0, slices)
    inner = sdf <= -tube.wall
    canvas.paint(lumen, inner, slices)
    if gas:
        canvas.paint(gas, inner & (y > gas_y), slices)


class _Cavity(NamedTuple):
    """Inner outline of the abdominal wall: a super-ellipse (semi-axes ``CAVITY_SEMI_AXES * size``) with a
    flatter back (exponent ``back_power`` where y < 0) that widens by ``flare`` per 150 mm downwards."""

    size: float
    back_power: float
    flare: float

    def radius(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float = 0.0) -> np.ndarray:
        """Distance (mm) from the body axis to the cavity wall in the direction of (x, y), at height z."""
        a, b = np.multiply(A.CAVITY_SEMI_AXES, self.size)
        power = np.where(y < 0, self.back_power, 2.0)
        theta = np.arctan2(y, x)
        edge = ((np.abs(np.cos(theta)) / a) ** power + (np.abs(np.sin(theta)) / b) ** power) ** (-1.0 / power)
        return edge * (1.0 - self.flare * z / 150.0)

    def outside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.hypot(x, y) > self.radius(x, y, z)


def _draw_body(canvas: _Canvas, rng: np.random.Generator, cavity: _Cavity, dome_z: tuple[float, float]) -> None:
    """Body cavity (visceral fat) wrapped in the muscle wall and subcutaneous fat, and the lung bases
    above the diaphragm domes at heights ``dome_z`` (right, left)."""
    x, y, z = canvas.axes
    xx, yy = x[:, None], y[None, :]
    theta, r = np.arctan2(yy, xx), np.hypot(xx, yy)
    edge = cavity.radius(xx, yy)
    muscle = rng.uniform(*A.MUSCLE_WALL)
    fat = rng.uniform(*A.SUBCUTANEOUS_FAT) * (1.0 + 0.25 * np.cos(theta - rng.uniform(0, 2 * np.pi)))
    inside, r3 = edge[:, :, None] * (1.0 - cavity.flare * z / 150.0), r[:, :, None]  # wider towards the pelvis
    layers = (r3 <= inside).astype(np.uint8) + (r3 <= inside + muscle) + (r3 <= inside + (muscle + fat)[:, :, None])
    lut = np.array([_TID[n] for n in ("air", "subcutaneous_fat", "muscle", "visceral_fat")], np.uint8)
    canvas.tissue[...] = lut[layers]
    diaphragm = np.where(xx > 0, dome_z[0], dome_z[1]) - 60.0 * (r / edge) ** 2
    top = slice(int(np.searchsorted(z, diaphragm.min())), None)
    lung = (z[top] > diaphragm[:, :, None]) & (np.abs(xx) > 18.0)[:, :, None]
    canvas.paint("lung", lung, (slice(None), slice(None), top))


def _paraspinal(size: float) -> list[Blob]:
    """The back muscles either side of the spine (never painted over)."""
    p = A.PARASPINAL
    return [Blob((side * p.centre[0] * size, p.centre[1] * size, 0.0), p.semi) for side in (1.0, -1.0)]


def _draw_spine(canvas: _Canvas, rng: np.random.Generator, size: float) -> float:
    """Back muscles, psoas and vertebral column; returns the anterior y of the vertebral bodies."""
    yv, (a, b) = A.VERTEBRA_Y * size, np.multiply(A.VERTEBRA_SEMI, size)
    for muscle in _paraspinal(size):
        _paint_blob(canvas, muscle, [("muscle", 1.0)])
    slices, (x, y, z) = canvas.region((-80.0, yv - 70.0, -1e4), (80.0, yv + b + 5.0, 1e4))
    psoas_r = A.PSOAS_MAX_RADIUS * size * np.clip((A.PSOAS_TOP_Z - z) / 90.0, 0.0, 1.0)
    canvas.paint("psoas", (np.abs(x) - A.PSOAS_X * size - psoas_r) ** 2 + (y - yv - 4.0) ** 2 <= psoas_r**2, slices)
    phase = (z - rng.uniform(0, A.VERTEBRA_PERIOD)) % A.VERTEBRA_PERIOD
    disc, middle = phase < A.DISC_THICKNESS, (phase > A.DISC_THICKNESS + 8.0) & (phase < A.VERTEBRA_PERIOD - 8.0)
    yc = yv - b - A.CANAL_RADIUS + 1.0
    canal = np.hypot(x, y - yc)
    shape_xy = (x / a) ** 2 + ((y - yv) / b) ** 2
    for name, mask in (
        ("cortical_bone", (shape_xy <= 1.0) & ~disc),
        ("cancellous_bone", (((x / (a - 3.0)) ** 2 + ((y - yv) / (b - 3.0)) ** 2) <= 1.0) & ~disc),
        ("disc", (shape_xy <= 1.0) & disc),
        (
            "cortical_bone",
            (canal <= A.CANAL_RADIUS + 6.0)
            | ((np.abs(x) <= 4.0) & (y < yc) & (y > yc - 40.0) & ~disc)
            | ((np.abs(x) <= 36.0 * size) & (np.abs(y - yc - 2.0) <= 3.0) & middle),
        ),
        ("spinal_canal", canal <= A.CANAL_RADIUS),
    ):
        canvas.paint(name, np.broadcast_to(mask, canvas.tissue[slices].shape), slices, protect=False)
    return yv + b


def _draw_bowel(canvas: _Canvas, rng: np.random.Generator, size: float) -> None:
    """Colon and small-bowel loops (the duodenum is painted with the organs)."""
    tubes = [jitter_tube(rng, t, size) for t in A.COLON]
    lo, hi = np.multiply(A.SMALL_BOWEL_BOX, size)
    for _ in range(int(rng.integers(4, 8))):
        walk = np.cumsum(np.vstack([rng.uniform(lo, hi), rng.normal(0, 18.0, (3, 3))]), axis=0)
        tubes.append(Tube(tuple(map(tuple, np.column_stack([walk, rng.uniform(9, 13, 4)]))), wall=2.5))
    for tube in tubes:
        _paint_tube(canvas, tube, "bowel_fluid", "bowel_wall", "bowel_gas", tube.top() - rng.uniform(0.0, 25.0))


def _vessels(rng: np.random.Generator, size: float) -> list[tuple[str, Blob | Tube]]:
    """Aorta and IVC in front of the spine (long cylinders, slightly tilted, ending flat at the
    bifurcation), splitting into (unlabelled) iliac vessels: (tissue, shape) pairs."""
    spine_front = (A.VERTEBRA_Y + A.VERTEBRA_SEMI[1]) * size
    bifurcation = A.BIFURCATION_Z + rng.uniform(-15.0, 15.0)
    out: list[tuple[str, Blob | Tube]] = []
    for name, x0, radius, below in (
        ("aorta", A.AORTA_X, A.AORTA_RADIUS, 0.0),
        ("inferior_vena_cava", A.IVC_X, A.IVC_RADIUS, 12.0),
    ):
        x0, radius, end = x0 + rng.uniform(-5.0, 5.0), radius * rng.uniform(0.88, 1.12), bifurcation - below
        y0 = spine_front + radius + rng.uniform(1.0, 5.0)
        for side in (1.0, -1.0):
            iliac = ((x0, y0, end + radius, 0.65 * radius), (x0 + side * 45.0, y0 - 10.0, end - 120.0, 0.6 * radius))
            out.append(("iliac_vessel", Tube(iliac)))
        trunk = Blob((x0, y0, end), (radius, radius, 1000.0), (0.0, rng.uniform(-2.0, 2.0), 0.0))
        out.append((name, trunk._replace(cuts=(A.cut_row(trunk, (0.0, 0.0, -1.0), (x0, y0, end)),))))
    return out


def _render(tissue: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """HU image from the tissue map: per-case tissue HU, ~4 mm correlated texture, white noise."""
    hu = _HU + rng.uniform(-1.0, 1.0, _HU.shape).astype(np.float32) * _HU_JITTER
    field = ndimage.gaussian_filter(rng.standard_normal(tissue.shape, dtype=np.float32), [4.0 / s for s in spacing])
    field /= max(float(field.std()), 1e-6)
    noise = rng.standard_normal(tissue.shape, dtype=np.float32) * np.float32(rng.uniform(10.0, 15.0))
    return np.clip(np.rint(hu[tissue] + _TEXTURE[tissue] * field + noise), -1024, 3071).astype(np.int16)


def _check_args(seed: int, shape: Sequence[int], spacing: Sequence[float]):
    seed = _as_int(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    try:
        shape, spacing = tuple(operator.index(n) for n in shape), tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be 3 integers and spacing 3 numbers, got {shape!r} and {spacing!r}.") from None
    if len(shape) != 3 or min(shape) < MIN_SHAPE:
        raise ValueError(f"shape must be 3 integers, each at least {MIN_SHAPE}; got {shape}.")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive finite numbers (mm), got {spacing}.")
    fov = tuple(n * s for n, s in zip(shape, spacing))
    if any(f < m for f, m in zip(fov, MIN_FIELD_OF_VIEW_MM)):
        raise ValueError(
            f"shape x spacing gives a {fov} mm field of view; the phantom needs at least "
            f"{MIN_FIELD_OF_VIEW_MM} mm (x, y, z). Increase shape or spacing."
        )
    return seed, shape, spacing


def _as_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}.") from None


class _Organs(NamedTuple):
    """One case's organ shapes (world mm), placed relative to each other."""

    liver: Blob
    gallbladder: Blob
    spleen: Blob
    kidneys: dict[str, Blob]
    adrenals: dict[str, list[Blob]]
    pancreas: Tube
    stomach: Tube
    duodenum: Tube
    splenic_vein: Tube
    esophagus: Tube
    vessels: list[tuple[str, Blob | Tube]]


def _place_organs(rng: np.random.Generator, cavity: _Cavity, habitus: float) -> _Organs:
    """Draw every organ's shape, position, rotation and volume for one case. ``habitus`` (0..1) is the
    case's body-size percentile: each organ's volume percentile is half of it plus half noise, so organ
    sizes correlate with each other as they do between people."""
    size = cavity.size
    percentile = 0.5 * habitus + 0.5 * rng.uniform(size=9)
    published = {
        "liver": A.LIVER_ML,
        "gallbladder": A.GALLBLADDER_ML,
        "spleen": A.SPLEEN_ML,
        "right": A.KIDNEY_ML,
        "left": A.KIDNEY_ML,
        "right_adrenal": A.ADRENAL_ML,
        "left_adrenal": A.ADRENAL_ML,
        "pancreas": A.PANCREAS_ML,
        "stomach": A.STOMACH_ML,
    }
    margins = {"right_adrenal": A.ADRENAL_VOLUME_MARGIN, "left_adrenal": A.ADRENAL_VOLUME_MARGIN}
    targets = {name: A.draw_volume(ml, q, margins.get(name)) for (name, ml), q in zip(published.items(), percentile)}

    liver = jitter_blob(rng, A.LIVER, size, shift=6.0, turn=5.0, shape=0.06, aspect=0.04, waves=(0.01, 0.03))
    liver = liver.with_volume(targets["liver"])
    # the gallbladder hangs in the liver's frame: same local position whatever the liver's size and turn
    gb_local = A.LIVER.axes().T @ np.subtract(A.GALLBLADDER.centre, A.LIVER.centre) / A.LIVER.semi
    gallbladder = jitter_blob(
        rng, A.GALLBLADDER._replace(centre=tuple(liver.point(gb_local))), 1.0, shift=3.0, turn=10.0, shape=0.2
    ).with_volume(targets["gallbladder"])
    spleen = jitter_blob(rng, A.SPLEEN, size, shift=8.0, turn=8.0, shape=0.2).with_volume(targets["spleen"])
    # its convex diaphragmatic surface lies against the left posterolateral ribs (the body wall here)
    outer = spleen.point((-1.0, 0.0, 0.0))
    reach, edge = np.hypot(outer[0], outer[1]), float(cavity.radius(outer[0], outer[1], outer[2]))
    push = (edge - rng.uniform(*A.SPLEEN_WALL_GAP) - reach) * np.array([outer[0], outer[1], 0.0]) / reach
    spleen = spleen._replace(centre=tuple(np.add(spleen.centre, push)))
    hilum = spleen.point(A.SPLEEN_HILUM)
    approach = np.asarray(A.SPLENIC_HILUM_APPROACH) / np.linalg.norm(A.SPLENIC_HILUM_APPROACH)

    left = jitter_blob(rng, A.LEFT_KIDNEY, size, shift=6.0, turn=6.0, shape=0.2)
    right = jitter_blob(rng, A.RIGHT_KIDNEY, size, shift=6.0, turn=6.0, shape=0.2)
    right = right._replace(centre=(*right.centre[:2], left.centre[2] - rng.uniform(*A.RIGHT_KIDNEY_DROP)))
    kidneys = {"right": right.with_volume(targets["right"]), "left": left.with_volume(targets["left"])}
    vessels = _vessels(rng, size)
    trunks = {name: vessel for name, vessel in vessels if name != "iliac_vessel"}
    adrenals = {side: _adrenal(rng, k, side, size, targets[f"{side}_adrenal"], trunks) for side, k in kidneys.items()}

    # pancreatic head, duodenal C-loop, pylorus and portal vein move together; the tail and the splenic
    # vein end at the splenic hilum
    head_shift = rng.uniform(-6.0, 6.0, 3)
    pancreas = jitter_tube(rng, A.PANCREAS, size, shift=head_shift, wobble=3.0)
    pts = np.array(pancreas.points)
    tail = hilum + approach * (rng.uniform(*A.PANCREAS_TAIL_GAP) + pts[-1, 3])
    pts[-2, :3] += 0.5 * (tail - pts[-1, :3])
    pts[-1, :3] = tail
    pancreas = pancreas._replace(points=tuple(map(tuple, pts))).with_volume(targets["pancreas"])
    duodenum = jitter_tube(rng, A.DUODENUM, size, shift=head_shift, wobble=3.0)
    vein = jitter_tube(rng, A.PORTAL_SPLENIC_VEIN, size, shift=head_shift, wobble=3.0)
    pts = np.array(vein.points)
    pts[0, :3] = hilum + approach * 4.0
    splenic_vein = vein._replace(points=tuple(map(tuple, pts)))
    stomach = jitter_tube(rng, A.STOMACH, size, shift=6.0)
    pts = np.array(stomach.points)
    pts[-1, :3] = duodenum.points[0][:3]
    stomach = stomach._replace(points=tuple(map(tuple, pts))).with_volume(targets["stomach"])
    esophagus = jitter_tube(rng, A.ESOPHAGUS, size, shift=4.0)
    pts = np.array(esophagus.points)
    pts[-1, :3] = stomach.points[0][:3]
    esophagus = esophagus._replace(points=tuple(map(tuple, pts)))

    # Organs painted later take the voxels they share with earlier ones, and the abdominal wall (never
    # painted over) takes what reaches beyond the cavity: grow each organ by what it will lose so that its
    # labelled volume stays the drawn one. Last painted first, so that each sees its final neighbours.
    vessels_ = [tube for name, tube in vessels if name != "iliac_vessel"]
    adrenal_parts = [part for parts in adrenals.values() for part in parts]
    pancreas = _grow(pancreas, targets["pancreas"], [gallbladder, *vessels_, *adrenal_parts], cavity)
    for side in ("right", "left"):
        later = [splenic_vein, pancreas, gallbladder, *vessels_, *adrenal_parts, *_paraspinal(size)]
        kidneys[side] = _grow(kidneys[side], targets[side], later, cavity)
    later = [duodenum, *kidneys.values(), splenic_vein, pancreas, gallbladder, *vessels_]
    stomach = _grow(stomach, targets["stomach"], later, cavity)
    later = [esophagus, stomach, duodenum, *kidneys.values(), splenic_vein, pancreas]
    spleen = _grow(spleen, targets["spleen"], later, cavity, rounds=2)
    later = [spleen, esophagus, stomach, duodenum, *kidneys.values(), splenic_vein, pancreas, gallbladder, *vessels_]
    grown = _grow(liver, targets["liver"], [*later, *_paraspinal(size)], cavity, rounds=3)
    move = grown.point(gb_local) - liver.point(gb_local)  # keep the gallbladder in its fossa
    liver, gallbladder = grown, gallbladder._replace(centre=tuple(np.add(gallbladder.centre, move)))
    return _Organs(
        liver, gallbladder, spleen, kidneys, adrenals, pancreas, stomach, duodenum, splenic_vein, esophagus, vessels
    )


def _grow(
    shape: Blob | Tube, target_ml: float, later: Sequence[Blob | Tube], cavity: _Cavity, rounds: int = 1
) -> Blob | Tube:
    """``shape`` (now of ``target_ml``) enlarged by the volume that ``later`` shapes and the abdominal
    wall will take from it (re-measured ``rounds`` times: growing makes it lose a little more)."""
    grown, step = shape, float(np.clip(np.cbrt(target_ml * 1000.0) / 20.0, 2.5, 6.0))  # ~20 steps across
    for _ in range(rounds):
        lost = _overlap_ml(grown, later, cavity, step)
        if isinstance(shape, Tube):
            grown = shape.with_volume(target_ml + lost)
        else:
            grown = shape.scaled((1.0 + lost / target_ml) ** (1.0 / 3.0))
    return grown


def _overlap_ml(shape: Blob | Tube, others: Sequence[Blob | Tube], cavity: _Cavity, step: float = 4.0) -> float:
    """Volume (mL) of ``shape`` that ``others`` or the abdominal wall cover, counted on a world grid of
    ``step`` mm."""
    lo, hi = _bounds(shape)
    axes = tuple(np.arange(a, b + step, step) for a, b in zip(lo, hi))
    grid = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    inside = _inside(shape, grid)
    covered = cavity.outside(*grid)
    for other in others:
        found = A.window(axes, *_bounds(other))
        if found is not None:
            covered[found[0]] |= _inside(other, found[1])
    return float(np.count_nonzero(inside & covered)) * step**3 / 1000.0


def _bounds(shape: Blob | Tube) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(shape, Tube):
        return shape.bounds()
    return np.subtract(shape.centre, shape.reach()), np.add(shape.centre, shape.reach())


def _inside(shape: Blob | Tube, grid) -> np.ndarray:
    return shape.distance(*grid) <= 0.0 if isinstance(shape, Tube) else shape.radius(*grid) <= 1.0


def _adrenal(
    rng: np.random.Generator, kidney: Blob, side: str, size: float, target_ml: float, trunks: dict[str, Blob]
) -> list[Blob]:
    """Adrenal gland above a kidney: two thin limbs diverging posteriorly from an apex (inverted V), in
    about half of the cases with a short body pointing forwards (inverted Y); scaled to ``target_ml``.
    The apex stays lateral to the vertebral body and the aorta, and the right one behind the IVC."""
    upper_pole = kidney.point((kidney.bend[1], 0.0, 1.0))
    apex = upper_pole + np.multiply(A.ADRENAL_APEX_OFFSET[side], size) + rng.uniform(-4.0, 4.0, 3)
    clear = A.VERTEBRA_SEMI[0] * size + 10.0
    if side == "right":
        ivc = trunks["inferior_vena_cava"]
        apex[0] = max(apex[0], clear)
        apex[1] = min(apex[1], ivc.centre[1] - ivc.semi[0] - 3.0)
    else:
        aorta = trunks["aorta"]
        apex[0] = min(apex[0], -clear, aorta.centre[0] - aorta.semi[0] - 10.0)
    lateral = 1.0 if side == "right" else -1.0  # +x is the patient's right
    angles = [
        -90.0 - lateral * rng.uniform(*A.ADRENAL_MEDIAL_LIMB_DEG),
        -90.0 + lateral * rng.uniform(*A.ADRENAL_LATERAL_LIMB_DEG),
    ]
    tilts = [tuple(rng.uniform(-12.0, 12.0, 2)) for _ in angles]
    body = rng.uniform(*A.ADRENAL_BODY_LENGTH) if rng.uniform() < 0.5 else 0.0
    aspect = np.exp(rng.uniform(-0.12, 0.12, 2))
    waves = [A.random_waves(rng) for _ in range(3)]

    def parts(scale: float) -> list[Blob]:
        semi = np.multiply(A.ADRENAL_LIMB_SEMI, scale) * (aspect[0], 1.0, aspect[1])
        out = []
        for angle, tilt, wave in zip(angles, tilts, waves):
            direction = np.array([np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle)), 0.0])
            out.append(Blob(tuple(apex + 0.9 * semi[0] * direction), tuple(semi), (*tilt, angle), waves=wave))
        if body > 0:  # short body in front of the apex (the stem of the Y), a little thicker than the limbs
            half = 0.5 * body * scale + semi[1]
            centre = apex + np.array([0.0, half, 0.0])
            out.append(Blob(tuple(centre), (half, 1.3 * semi[1], 0.6 * semi[2]), (0.0, 0.0, 90.0), waves=waves[2]))
        return out

    grid = 0.8  # mm: the limbs are only 3-6 mm thick
    scale = (target_ml / max(_union_volume(parts(1.0), grid), 1e-9)) ** (1.0 / 3.0)
    return parts(scale)


def _union_volume(blobs: Sequence[Blob], step: float) -> float:
    """Volume (mL) of the union of ``blobs`` counted on a grid of ``step`` mm."""
    lo = np.min([np.subtract(b.centre, b.reach()) for b in blobs], axis=0)
    hi = np.max([np.add(b.centre, b.reach()) for b in blobs], axis=0)
    x, y, z = (np.arange(a, b + step, step) for a, b in zip(lo, hi))
    grid = (x[:, None, None], y[None, :, None], z[None, None, :])
    inside = np.zeros((len(x), len(y), len(z)), bool)
    for blob in blobs:
        inside |= blob.radius(*grid) <= 1.0
    return float(np.count_nonzero(inside)) * step**3 / 1000.0


def _paint_stomach(canvas: _Canvas, rng: np.random.Generator, stomach: Tube) -> None:
    """Stomach wall, fluid and gas. Supine, gas floats to the anterior (non-dependent) side: above an
    air-fluid level in the body and antrum, and as a cap in the fundus above its own level."""
    found = canvas.region(*stomach.bounds())
    if found is None:
        return
    slices, (x, y, z) = found
    sdf = stomach.distance(x, y, z)
    canvas.paint("stomach_wall", sdf <= 0, slices)
    lumen = sdf <= -stomach.wall
    canvas.paint("stomach_fluid", lumen, slices)
    fx, fy, fz, fr = stomach.points[0]
    level = stomach.top() - stomach.wall - rng.uniform(8.0, 35.0)
    fundus_level = fy + (fr - stomach.wall) * rng.uniform(-0.1, 0.5)
    fundus = (x - fx) ** 2 + (y - fy) ** 2 + (z - fz) ** 2 <= (1.3 * fr) ** 2
    canvas.paint("stomach_gas", lumen & ((y > level) | (fundus & (y > fundus_level))), slices)


def generate_phantom(
    seed: int, shape: tuple[int, int, int] = (112, 112, 56), spacing: tuple[float, float, float] = (3.0, 3.0, 5.0)
) -> Phantom:
    """Generate one synthetic abdominal CT phantom.

    Args:
        seed: non-negative integer; the only source of randomness (``np.random.default_rng(seed)``).
        shape: voxels along x (patient right), y (anterior), z (superior); each at least 16.
        spacing: voxel size in mm; positive. ``shape * spacing`` must be at least ``MIN_FIELD_OF_VIEW_MM``.

    Returns:
        A ``Phantom`` whose image (HU, int16) is rendered from its label map's tissues.

    Raises:
        ValueError: if an argument is out of range.
    """
    seed, shape, spacing = _check_args(seed, shape, spacing)
    rng = np.random.default_rng(seed)
    habitus = rng.uniform()
    lo, hi = A.CAVITY_SCALE
    size = lo + (hi - lo) * float(np.clip(0.6 * habitus + 0.4 * rng.uniform(), 0.0, 1.0))
    cavity = _Cavity(size, rng.uniform(2.2, 2.8), rng.uniform(0.0, 0.03))  # flatter back, lying on the table
    canvas, organs = _Canvas(shape, spacing), _place_organs(rng, cavity, habitus)
    dome = organs.liver.centre[2] + organs.liver.semi[2]
    _draw_body(canvas, rng, cavity, (dome + 5.0, dome - 10.0 + rng.uniform(-5.0, 5.0)))
    _draw_spine(canvas, rng, size)
    _draw_bowel(canvas, rng, size)
    # later organs win where shapes meet
    _paint_blob(canvas, organs.liver, [("liver", 1.0)])
    _paint_blob(canvas, organs.spleen, [("spleen", 1.0)])
    _paint_tube(canvas, organs.esophagus, "esophagus")
    _paint_stomach(canvas, rng, organs.stomach)
    duodenum = organs.duodenum  # the C-loop around the pancreatic head, under the liver
    _paint_tube(canvas, duodenum, "bowel_fluid", "bowel_wall", "bowel_gas", duodenum.top() - rng.uniform(0.0, 25.0))
    for side, kidney in organs.kidneys.items():
        medulla = rng.uniform(0.65, 0.75)
        _paint_blob(canvas, kidney, [(f"{side}_kidney_cortex", 1.0), (f"{side}_kidney_medulla", medulla)])
    _paint_tube(canvas, organs.splenic_vein, "portal_splenic_vein")
    _paint_tube(canvas, organs.pancreas, "pancreas")
    _paint_blob(canvas, organs.gallbladder, [("gallbladder", 1.0)])
    for name, vessel in organs.vessels:
        if isinstance(vessel, Tube):
            _paint_tube(canvas, vessel, name)
        else:
            _paint_blob(canvas, vessel, [(name, 1.0)])
    for side, parts in organs.adrenals.items():
        for part in parts:
            _paint_blob(canvas, part, [(f"{side}_adrenal_gland", 1.0)])
    image = _render(canvas.tissue, rng, spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return Phantom(image=image, label=_LABEL_LUT[canvas.tissue], affine=affine, tissue=canvas.tissue)


def write_phantom_dataset(
    out_dir: str | Path,
    num_cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] = (112, 112, 56),
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0),
) -> list[dict[str, str]]:
    """Write (or reuse) a dataset of phantoms as NIfTI files plus a ``phantom.json`` manifest.

    Layout: ``out_dir/imagesTr/phantom_XXXX.nii.gz`` (int16 HU), ``out_dir/labelsTr/phantom_XXXX.nii.gz``
    (uint8 BTCV ids), ``out_dir/tissuesTr/phantom_XXXX.nii.gz`` (uint8 tissue ids, see ``TISSUE_NAMES``)
    and ``out_dir/phantom.json``, whose ``"training"`` list can be read with
    ``monai.data.load_decathlon_datalist``. Case ``i`` is ``generate_phantom(seed * CASE_SEED_STRIDE + i)``.
    Files are written to temporary names and renamed, the manifest last; if the manifest already
    records the same generator version and arguments and every file exists, nothing is rewritten.

    Args:
        out_dir: output directory, created if missing.
        num_cases: number of cases, 1 to ``CASE_SEED_STRIDE``.
        seed: non-negative dataset seed.
        shape: voxels per case, see ``generate_phantom``.
        spacing: voxel size in mm, see ``generate_phantom``.

    Returns:
        One ``{"image": path, "label": path, "tissue": path, "convention": "btcv"}`` per case, absolute paths.

    Raises:
        ValueError: if an argument is out of range.
    """
    num_cases = _as_int(num_cases, "num_cases")
    if not 1 <= num_cases <= CASE_SEED_STRIDE:
        raise ValueError(f"num_cases must be between 1 and {CASE_SEED_STRIDE}, got {num_cases}.")
    seed, shape, spacing = _check_args(seed, shape, spacing)
    out = Path(out_dir).expanduser().resolve()
    params = {
        "version": PHANTOM_VERSION,
        "seed": seed,
        "num_cases": num_cases,
        "shape": list(shape),
        "spacing": list(spacing),
        "case_seed": f"seed * {CASE_SEED_STRIDE} + index",
    }
    entries = [
        {
            "image": str(out / "imagesTr" / f"phantom_{i:04d}.nii.gz"),
            "label": str(out / "labelsTr" / f"phantom_{i:04d}.nii.gz"),
            "tissue": str(out / "tissuesTr" / f"phantom_{i:04d}.nii.gz"),
            "convention": "btcv",
        }
        for i in range(num_cases)
    ]
    manifest = out / "phantom.json"
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = None
    old = old if isinstance(old, dict) else {}
    if (
        {k: old.get(k) for k in params} == params
        and old.get("training") == entries
        and all(Path(e[key]).is_file() for e in entries for key in _FILE_KEYS)
    ):
        logger.debug("phantom dataset in %s is up to date", out)
        return entries
    logger.info("writing %d phantom cases (seed %d) to %s", num_cases, seed, out)
    manifest.unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    for i, entry in enumerate(entries):
        case = generate_phantom(seed * CASE_SEED_STRIDE + i, shape, spacing)
        _save_nifti(case.image, case.affine, Path(entry["image"]))
        _save_nifti(case.label, case.affine, Path(entry["label"]))
        _save_nifti(case.tissue, case.affine, Path(entry["tissue"]))
    keep = {e[key] for e in entries for key in _FILE_KEYS}
    for e in old.get("training", []) if isinstance(old.get("training"), list) else []:
        for p in (e.get(key) for key in _FILE_KEYS) if isinstance(e, dict) else ():
            if isinstance(p, str) and p not in keep and Path(p).parent.parent == out:
                Path(p).unlink(missing_ok=True)  # stale case of the previous, larger dataset
    text = json.dumps({**params, "training": entries}, indent=2)
    write_atomically(manifest, lambda tmp: tmp.write_text(text))
    return entries


_FILE_KEYS = ("image", "label", "tissue")


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header["descrip"] = f"Med-SORA synthetic phantom v{PHANTOM_VERSION}".encode()
    write_atomically(path, lambda tmp: nib.save(img, str(tmp)))
