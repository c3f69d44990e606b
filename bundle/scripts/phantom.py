"""Synthetic abdominal CT phantoms: the bundle's embedded default dataset.

A phantom is a synthetic stand-in, not real anatomy: smooth deformed ellipsoids and tubes for the
body wall, spine, vessels, bowel and the BTCV organs, at textbook-plausible positions, volumes and
portal-venous-phase Hounsfield units, with correlated texture and white noise. It exists so that the
bundle can smoke-train and demo without any configured data. Organ geometry lives in
``scripts.phantom_anatomy``; this module draws it and writes NIfTI datasets.

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

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts import phantom_anatomy as A
from scripts.phantom_anatomy import BTCV_LABELS, TISSUES, Blob, Tube, jitter_blob, jitter_tube, volume_scale
from text_pipeline.files import write_atomically

__all__ = [
    "PHANTOM_VERSION",
    "MIN_FIELD_OF_VIEW_MM",
    "CASE_SEED_STRIDE",
    "BTCV_LABELS",
    "Phantom",
    "generate_phantom",
    "write_phantom_dataset",
]

logger = logging.getLogger(__name__)

PHANTOM_VERSION = "1.0.0"
"""Bump whenever the generated voxels change; cached datasets with another version are regenerated."""
MIN_FIELD_OF_VIEW_MM = (260.0, 190.0, 240.0)
"""Smallest field of view (x, y, z; shape times spacing) that holds every labelled organ. The body outline
(up to about 340 x 270 mm across) may be cut off by fields of view smaller than the default 336 x 336 mm."""
MIN_SHAPE = 16
CASE_SEED_STRIDE = 100_003
"""Case ``i`` of a dataset with seed ``s`` uses ``generate_phantom(s * CASE_SEED_STRIDE + i)``."""

_NAMES = tuple(TISSUES)
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
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


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


def _draw_body(canvas: _Canvas, rng: np.random.Generator, scale: float, dome_z: tuple[float, float]) -> None:
    """Body cavity (visceral fat) wrapped in the muscle wall and subcutaneous fat, and the lung bases
    above the diaphragm domes at heights ``dome_z`` (right, left)."""
    x, y, z = canvas.axes
    xx, yy = x[:, None], y[None, :]
    a, b = np.multiply(A.CAVITY_SEMI_AXES, scale)
    power = np.where(yy < 0, rng.uniform(2.2, 2.8), 2.0)  # flatter back, lying on the table
    theta, r = np.arctan2(yy, xx), np.hypot(xx, yy)
    cavity = ((np.abs(np.cos(theta)) / a) ** power + (np.abs(np.sin(theta)) / b) ** power) ** (-1.0 / power)
    muscle = rng.uniform(*A.MUSCLE_WALL)
    fat = rng.uniform(*A.SUBCUTANEOUS_FAT) * (1.0 + 0.25 * np.cos(theta - rng.uniform(0, 2 * np.pi)))
    flare = 1.0 - rng.uniform(0.0, 0.03) * z / 150.0  # wider towards the pelvis
    inside, r3 = cavity[:, :, None] * flare, r[:, :, None]
    layers = (r3 <= inside).astype(np.uint8) + (r3 <= inside + muscle) + (r3 <= inside + (muscle + fat)[:, :, None])
    lut = np.array([_TID[n] for n in ("air", "subcutaneous_fat", "muscle", "visceral_fat")], np.uint8)
    canvas.tissue[...] = lut[layers]
    diaphragm = np.where(xx > 0, dome_z[0], dome_z[1]) - 60.0 * (r / cavity) ** 2
    top = slice(int(np.searchsorted(z, diaphragm.min())), None)
    lung = (z[top] > diaphragm[:, :, None]) & (np.abs(xx) > 18.0)[:, :, None]
    canvas.paint("lung", lung, (slice(None), slice(None), top))


def _draw_spine(canvas: _Canvas, rng: np.random.Generator, size: float) -> float:
    """Back muscles, psoas and vertebral column; returns the anterior y of the vertebral bodies."""
    yv, (a, b) = A.VERTEBRA_Y * size, np.multiply(A.VERTEBRA_SEMI, size)
    for side in (1.0, -1.0):
        p = A.PARASPINAL
        _paint_blob(canvas, Blob((side * p.centre[0] * size, p.centre[1] * size, 0.0), p.semi), [("muscle", 1.0)])
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
    tubes = [jitter_tube(rng, t, size) for t in (*A.COLON, A.DUODENUM)]
    lo, hi = np.multiply(A.SMALL_BOWEL_BOX, size)
    for _ in range(int(rng.integers(4, 8))):
        walk = np.cumsum(np.vstack([rng.uniform(lo, hi), rng.normal(0, 18.0, (3, 3))]), axis=0)
        tubes.append(Tube(tuple(map(tuple, np.column_stack([walk, rng.uniform(9, 13, 4)]))), wall=2.5))
    for tube in tubes:
        _paint_tube(canvas, tube, "bowel_fluid", "bowel_wall", "bowel_gas", tube.top() - rng.uniform(0.0, 25.0))


def _draw_vessels(canvas: _Canvas, rng: np.random.Generator, spine_front: float) -> None:
    """Aorta and IVC in front of the spine, splitting into (unlabelled) iliac vessels."""
    bifurcation = A.BIFURCATION_Z + rng.uniform(-15.0, 15.0)
    for name, x0, radius, below in (
        ("aorta", A.AORTA_X, A.AORTA_RADIUS, 0.0),
        ("inferior_vena_cava", A.IVC_X, A.IVC_RADIUS, 12.0),
    ):
        x0, radius, end = x0 + rng.uniform(-5.0, 5.0), radius * rng.uniform(0.88, 1.12), bifurcation - below
        y0 = spine_front + radius + rng.uniform(1.0, 5.0)
        for side in (1.0, -1.0):
            iliac = ((x0, y0, end + radius, 0.65 * radius), (x0 + side * 45.0, y0 - 10.0, end - 120.0, 0.6 * radius))
            _paint_tube(canvas, Tube(iliac), "iliac_vessel")
        _paint_tube(
            canvas,
            Tube(((x0, y0, 400.0, radius), (x0 + rng.uniform(-4.0, 4.0), y0, 0.0, radius), (x0, y0, end, radius))),
            name,
        )


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
    canvas, size = _Canvas(shape, spacing), rng.uniform(*A.CAVITY_SCALE)
    liver_scale = volume_scale(rng, A.LIVER_ML, A.LIVER_NOMINAL_ML)
    liver = [jitter_blob(rng, part, size, liver_scale, shift=s) for part, s in zip(A.LIVER, (10.0, 4.0))]
    dome = liver[0].centre[2] + liver[0].semi[2]
    _draw_body(canvas, rng, size, (dome + 5.0, dome - 10.0 + rng.uniform(-5.0, 5.0)))
    spine_front = _draw_spine(canvas, rng, size)
    _draw_bowel(canvas, rng, size)
    for part in liver:
        _paint_blob(canvas, part, [("liver", 1.0)])
    _paint_blob(
        canvas, jitter_blob(rng, A.SPLEEN, size, volume_scale(rng, A.SPLEEN_ML, A.SPLEEN_NOMINAL_ML)), [("spleen", 1.0)]
    )
    _paint_tube(canvas, jitter_tube(rng, A.ESOPHAGUS, size, shift=4.0), "esophagus")
    stomach = jitter_tube(rng, A.STOMACH, size, volume_scale(rng, A.STOMACH_ML, A.STOMACH_NOMINAL_ML, 2))
    gas_level = stomach.top() - rng.uniform(5.0, 40.0)
    _paint_tube(canvas, stomach, "stomach_fluid", "stomach_wall", "stomach_gas", gas_level)
    kidneys = {}
    lift = rng.uniform(-10.0, 10.0)  # shared by both sides so that the left kidney stays the higher one
    for side, kidney in (("right", A.RIGHT_KIDNEY), ("left", A.LEFT_KIDNEY)):
        k = jitter_blob(rng, kidney, size, volume_scale(rng, A.KIDNEY_ML, A.KIDNEY_NOMINAL_ML), shift=5.0)
        kidneys[side] = k = k._replace(centre=tuple(np.add(k.centre, (*rng.uniform(-5.0, 5.0, 2), lift))))
        _paint_blob(canvas, k, [(f"{side}_kidney_cortex", 1.0), (f"{side}_kidney_medulla", rng.uniform(0.65, 0.75))])
    _paint_tube(canvas, jitter_tube(rng, A.PORTAL_SPLENIC_VEIN, size, shift=4.0), "portal_splenic_vein")
    pancreas_scale = volume_scale(rng, A.PANCREAS_ML, A.PANCREAS_NOMINAL_ML, 2)
    _paint_tube(canvas, jitter_tube(rng, A.PANCREAS, size, pancreas_scale, shift=6.0, wobble=3.0), "pancreas")
    gallbladder_scale = volume_scale(rng, A.GALLBLADDER_ML, A.GALLBLADDER_NOMINAL_ML)
    _paint_blob(canvas, jitter_blob(rng, A.GALLBLADDER, size, gallbladder_scale), [("gallbladder", 1.0)])
    _draw_vessels(canvas, rng, spine_front)
    adrenal_scale = volume_scale(rng, A.ADRENAL_ML, A.ADRENAL_NOMINAL_ML)
    for side, k in kidneys.items():
        upper_pole = np.add(k.centre, A.rotation(k.euler_deg)[:, 2] * k.semi[2])
        apex = upper_pole + np.multiply(A.ADRENAL_APEX_OFFSET[side], size) + rng.uniform(-4.0, 4.0, 3)
        for sign in (1.0, -1.0):
            angle = -90.0 + sign * A.ADRENAL_LIMB_SPREAD_DEG + rng.uniform(-8.0, 8.0)
            direction = np.array([np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle)), 0.0])
            semi = np.multiply(A.ADRENAL_LIMB_SEMI, adrenal_scale)
            limb = Blob(
                tuple(apex + 0.9 * semi[0] * direction),
                tuple(semi),
                (*rng.uniform(-10.0, 10.0, 2), angle),
                waves=A.random_waves(rng),
            )
            _paint_blob(canvas, limb, [(f"{side}_adrenal_gland", 1.0)])
    image = _render(canvas.tissue, rng, spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return Phantom(image=image, label=_LABEL_LUT[canvas.tissue], affine=affine)


def write_phantom_dataset(
    out_dir: str | Path,
    num_cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] = (112, 112, 56),
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0),
) -> list[dict[str, str]]:
    """Write (or reuse) a dataset of phantoms as NIfTI files plus a ``phantom.json`` manifest.

    Layout: ``out_dir/imagesTr/phantom_XXXX.nii.gz`` (int16 HU), ``out_dir/labelsTr/phantom_XXXX.nii.gz``
    (uint8 BTCV ids) and ``out_dir/phantom.json``, whose ``"training"`` list can be read with
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
        One ``{"image": path, "label": path, "convention": "btcv"}`` per case, absolute paths.

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
        and all(Path(p).is_file() for e in entries for p in (e["image"], e["label"]))
    ):
        logger.debug("phantom dataset in %s is up to date", out)
        return entries
    logger.info("writing %d phantom cases (seed %d) to %s", num_cases, seed, out)
    manifest.unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    for i, entry in enumerate(entries):
        case = generate_phantom(seed * CASE_SEED_STRIDE + i, shape, spacing)
        _save_nifti(case.image, case.affine, Path(entry["image"]))
        _save_nifti(case.label, case.affine, Path(entry["label"]))
    keep = {p for e in entries for p in (e["image"], e["label"])}
    for e in old.get("training", []) if isinstance(old.get("training"), list) else []:
        for p in (e.get("image"), e.get("label")) if isinstance(e, dict) else ():
            if isinstance(p, str) and p not in keep and Path(p).parent.parent == out:
                Path(p).unlink(missing_ok=True)  # stale case of the previous, larger dataset
    text = json.dumps({**params, "training": entries}, indent=2)
    write_atomically(manifest, lambda tmp: tmp.write_text(text))
    return entries


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header["descrip"] = f"Med-SORA synthetic phantom v{PHANTOM_VERSION}".encode()
    write_atomically(path, lambda tmp: nib.save(img, str(tmp)))
