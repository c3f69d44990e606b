"""Geometry of the synthetic abdominal CT phantom (see ``scripts.phantom``, which draws it).

Holds the tissue table (HU, BTCV label), the organ geometry table, the two shape primitives the
organs are made of (wavy rotated ellipsoids and tapered tubes) and their per-case random jitter.
Positions are world millimetres in RAS+ (+x patient right, +y anterior, +z superior) for an abdominal
cavity of nominal size centred on the origin. The numbers are textbook-plausible, not measured anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.interpolate import CubicSpline

__all__ = [
    "BTCV_LABELS",
    "TISSUES",
    "PROTECTED_TISSUES",
    "Tissue",
    "Blob",
    "Tube",
    "window",
    "jitter_blob",
    "jitter_tube",
    "volume_scale",
    "random_waves",
]

BTCV_LABELS: dict[str, int] = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "inferior_vena_cava": 9,
    "portal_splenic_vein": 10,
    "pancreas": 11,
    "right_adrenal_gland": 12,
    "left_adrenal_gland": 13,
}


class Tissue(NamedTuple):
    """One tissue class: BTCV label it belongs to (0 = background), portal-venous HU, per-case
    uniform HU jitter half-width, and amplitude (HU) of its correlated texture."""

    label: int
    hu: float
    jitter: float
    texture: float


_L = BTCV_LABELS
TISSUES: dict[str, Tissue] = {
    "air": Tissue(0, -1000.0, 0.0, 0.0),
    "subcutaneous_fat": Tissue(0, -100.0, 8.0, 6.0),
    "muscle": Tissue(0, 50.0, 6.0, 6.0),
    "psoas": Tissue(0, 50.0, 6.0, 6.0),
    "visceral_fat": Tissue(0, -95.0, 8.0, 8.0),
    "lung": Tissue(0, -850.0, 30.0, 25.0),
    "cancellous_bone": Tissue(0, 300.0, 40.0, 35.0),
    "cortical_bone": Tissue(0, 650.0, 40.0, 40.0),
    "disc": Tissue(0, 90.0, 10.0, 5.0),
    "spinal_canal": Tissue(0, 25.0, 5.0, 3.0),
    "bowel_wall": Tissue(0, 60.0, 10.0, 5.0),
    "bowel_fluid": Tissue(0, 15.0, 8.0, 3.0),
    "bowel_gas": Tissue(0, -900.0, 30.0, 20.0),
    "iliac_vessel": Tissue(0, 170.0, 12.0, 3.0),
    "spleen": Tissue(_L["spleen"], 110.0, 6.0, 5.0),
    "right_kidney_cortex": Tissue(_L["right_kidney"], 185.0, 8.0, 5.0),
    "right_kidney_medulla": Tissue(_L["right_kidney"], 140.0, 8.0, 5.0),
    "left_kidney_cortex": Tissue(_L["left_kidney"], 185.0, 8.0, 5.0),
    "left_kidney_medulla": Tissue(_L["left_kidney"], 140.0, 8.0, 5.0),
    "gallbladder": Tissue(_L["gallbladder"], 10.0, 6.0, 2.0),
    "esophagus": Tissue(_L["esophagus"], 45.0, 8.0, 4.0),
    "liver": Tissue(_L["liver"], 100.0, 7.0, 6.0),
    "stomach_wall": Tissue(_L["stomach"], 75.0, 8.0, 4.0),
    "stomach_fluid": Tissue(_L["stomach"], 10.0, 7.0, 2.0),
    "stomach_gas": Tissue(_L["stomach"], -900.0, 30.0, 20.0),
    "aorta": Tissue(_L["aorta"], 175.0, 12.0, 3.0),
    "inferior_vena_cava": Tissue(_L["inferior_vena_cava"], 165.0, 8.0, 3.0),
    "portal_splenic_vein": Tissue(_L["portal_splenic_vein"], 170.0, 10.0, 3.0),
    "pancreas": Tissue(_L["pancreas"], 90.0, 6.0, 5.0),
    "right_adrenal_gland": Tissue(_L["right_adrenal_gland"], 40.0, 5.0, 3.0),
    "left_adrenal_gland": Tissue(_L["left_adrenal_gland"], 40.0, 5.0, 3.0),
}
# Organs never paint over these (body wall, back muscles, skeleton).
PROTECTED_TISSUES = ("air", "subcutaneous_fat", "muscle", "cancellous_bone", "cortical_bone", "disc", "spinal_canal")


def window(axes: Sequence[np.ndarray], lo: Sequence[float], hi: Sequence[float]):
    """Slices of the sorted 1-D ``axes`` inside the box [lo, hi] and their broadcastable coordinates
    ``(x[:, None, None], y[None, :, None], z[None, None, :])``; None if the box misses the axes."""
    slices = []
    for ax, a, b in zip(axes, lo, hi):
        i0, i1 = int(np.searchsorted(ax, a, "left")), int(np.searchsorted(ax, b, "right"))
        if i1 <= i0:
            return None
        slices.append(slice(i0, i1))
    x, y, z = (ax[s] for ax, s in zip(axes, slices))
    return tuple(slices), (x[:, None, None], y[None, :, None], z[None, None, :])


def rotation(euler_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix ``Rx @ Ry @ Rz`` for angles (degrees) about the world x, y and z axes."""
    ax, ay, az = np.deg2rad(euler_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


class Blob(NamedTuple):
    """Rotated ellipsoid; its local axes are the columns of ``rotation(euler_deg)``. ``bites`` are
    ellipsoids (centre, semi-axes; both in units of the local semi-axes) cut away from it; ``waves``
    rows (amplitude, frequency, phase, unit direction xyz) displace its surface radially."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    euler_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bites: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = ()
    waves: tuple[tuple[float, ...], ...] = ()

    def reach(self) -> np.ndarray:
        """Half-size (mm) of the world axis-aligned box around the blob."""
        bulge = 1.0 + sum(w[0] for w in self.waves)
        return np.sqrt(rotation(self.euler_deg) ** 2 @ np.square(self.semi)) * bulge

    def radius(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised radius on the broadcast grid of ``x, y, z`` (mm): <= 1 inside, inf well outside."""
        rot, d = rotation(self.euler_deg), (x - self.centre[0], y - self.centre[1], z - self.centre[2])
        q = [(rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]) / self.semi[k] for k in range(3)]
        r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        near = r <= 1.0 + sum(w[0] for w in self.waves)
        q, rn = [qk[near] for qk in q], r[near] + 1e-6
        bump = sum(
            a * np.cos(np.pi * f * (q[0] * n0 + q[1] * n1 + q[2] * n2) / rn + ph) for a, f, ph, n0, n1, n2 in self.waves
        )
        for centre, semi in self.bites:
            rn[sum(((qk - c) / s) ** 2 for qk, c, s in zip(q, centre, semi)) <= 1.0] = np.inf
        r[:] = np.inf
        r[near] = rn / (1.0 + bump)
        return r


class Tube(NamedTuple):
    """Smooth tube through control points ``(x, y, z, radius)`` (mm); ``wall`` > 0 makes it hollow."""

    points: tuple[tuple[float, float, float, float], ...]
    wall: float = 0.0

    def top(self) -> float:
        """Most anterior y reached by the control spheres (the non-dependent side when supine)."""
        return max(p[1] + p[3] for p in self.points)

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) on the broadcast grid of ``x, y, z``; inf far away."""
        pts = np.asarray(self.points, float)
        chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts[:, :3], axis=0), axis=1))]
        pts = CubicSpline(chord, pts, axis=0)(np.linspace(0.0, chord[-1], max(2, int(chord[-1] / 4.0) + 2)))
        pts[:, 3] = np.maximum(pts[:, 3], 1.0)
        axes = (x.ravel(), y.ravel(), z.ravel())
        sdf = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.inf, np.float32)
        for a, b in zip(pts[:-1], pts[1:]):
            r = max(a[3], b[3])
            seg = window(axes, np.minimum(a[:3], b[:3]) - r, np.maximum(a[:3], b[:3]) + r)
            if seg is None:
                continue
            ab, (dx, dy, dz) = b[:3] - a[:3], (c - c0 for c, c0 in zip(seg[1], a[:3]))
            t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / max(ab @ ab, 1e-9), 0.0, 1.0)
            dist = np.sqrt((dx - t * ab[0]) ** 2 + (dy - t * ab[1]) ** 2 + (dz - t * ab[2]) ** 2)
            view = sdf[seg[0]]
            np.minimum(view, dist - (a[3] + t * (b[3] - a[3])), out=view)
        return sdf

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box (lo, hi) in mm that contains the tube."""
        pts = np.asarray(self.points, float)
        pad = 1.3 * pts[:, 3].max()  # the smoothing spline may overshoot the control points a little
        return pts[:, :3].min(0) - pad, pts[:, :3].max(0) + pad


def random_waves(rng: np.random.Generator, n: int = 3) -> tuple[tuple[float, ...], ...]:
    """Low-frequency radial surface displacement of a few percent for ``Blob.waves``."""
    normal = rng.normal(size=(n, 3))
    rows = np.column_stack(
        [
            rng.uniform(0.02, 0.05, n),
            rng.uniform(0.8, 2.0, n),
            rng.uniform(0, 2 * np.pi, n),
            normal / np.linalg.norm(normal, axis=1, keepdims=True),
        ]
    )
    return tuple(map(tuple, rows))


def volume_scale(rng: np.random.Generator, target_ml: tuple[float, float], nominal_ml: float, dims: int = 3) -> float:
    """Linear scale that takes a shape of ``nominal_ml`` to a volume drawn from ``target_ml``
    (``dims`` = 2 for tube radii)."""
    return float((rng.uniform(*target_ml) / nominal_ml) ** (1.0 / dims))


def jitter_blob(
    rng: np.random.Generator, blob: Blob, size: float, scale: float, shift: float = 10.0, turn: float = 8.0
) -> Blob:
    """Per-case blob: centre scaled by ``size`` (the case's cavity scale) and shifted up to ``shift`` mm,
    semi-axes times ``scale`` with aspect jitter up to 8 %, rotation jitter up to ``turn`` degrees and
    random surface waves."""
    aspect = np.exp(rng.uniform(-0.08, 0.08, 3))
    return Blob(
        tuple(np.multiply(blob.centre, size) + rng.uniform(-shift, shift, 3)),
        tuple(np.multiply(blob.semi, scale * aspect / np.prod(aspect) ** (1 / 3))),
        tuple(np.add(blob.euler_deg, rng.uniform(-turn, turn, 3))),
        blob.bites,
        random_waves(rng),
    )


def jitter_tube(
    rng: np.random.Generator,
    tube: Tube,
    size: float,
    radius_scale: float = 1.0,
    shift: float = 8.0,
    wobble: float = 4.0,
) -> Tube:
    """Per-case tube: points scaled by ``size``, shifted together up to ``shift`` mm and each up to
    ``wobble`` mm; radii times ``radius_scale`` and +-8 %."""
    pts = np.array(tube.points, float)
    pts[:, :3] = pts[:, :3] * size + rng.uniform(-shift, shift, 3) + rng.uniform(-wobble, wobble, (len(pts), 3))
    pts[:, 3] *= radius_scale * rng.uniform(0.92, 1.08, len(pts))
    return Tube(tuple(map(tuple, pts)), tube.wall)


# Organ positions scale with the abdominal cavity; fat and muscle wrap it, so obese bodies are larger.
CAVITY_SEMI_AXES = (120.0, 90.0)  # lateral, antero-posterior (mm)
CAVITY_SCALE = (0.95, 1.05)
SUBCUTANEOUS_FAT = (6.0, 20.0)  # thickness range (mm), varies +-25 % around the body
MUSCLE_WALL = (8.0, 12.0)
VERTEBRA_Y, VERTEBRA_SEMI, CANAL_RADIUS = -40.0, (21.0, 16.0), 9.0
VERTEBRA_PERIOD, DISC_THICKNESS = 34.0, 7.0
PARASPINAL = Blob((36.0, -82.0, 0.0), (24.0, 17.0, 400.0))  # mirrored to the left
PSOAS_X, PSOAS_TOP_Z, PSOAS_MAX_RADIUS = 32.0, -25.0, 22.0
AORTA_X, AORTA_RADIUS, IVC_X, IVC_RADIUS, BIFURCATION_Z = -14.0, 11.5, 24.0, 11.0, -115.0

# Organ shapes at scale 1 and the per-case volume range (mL) they are scaled to. ``nominal_ml`` is the
# mean labelled volume measured at scale 1 after clipping and carving by later organs (calibration).
LIVER = (Blob((60.0, 0.0, 25.0), (62.0, 70.0, 70.0)), Blob((-8.0, 44.0, 49.0), (52.0, 27.0, 33.0), (0.0, 0.0, -10.0)))
LIVER_ML, LIVER_NOMINAL_ML = (1450.0, 1750.0), 1200.0
SPLEEN = Blob((-82.0, -40.0, 37.0), (20.0, 36.0, 56.0), (0.0, 10.0, 220.0), (((-1.55, 0.0, 0.1), (1.0, 0.85, 0.8)),))
SPLEEN_ML, SPLEEN_NOMINAL_ML = (160.0, 240.0), 135.0
KIDNEY_BITE = (((1.05, 0.0, 0.0), (0.45, 0.45, 0.3)),)  # renal hilum, local +x faces antero-medially
RIGHT_KIDNEY = Blob((66.0, -42.0, -39.0), (28.0, 20.0, 52.0), (15.0, -15.0, 150.0), KIDNEY_BITE)
LEFT_KIDNEY = Blob((-66.0, -42.0, -24.0), (28.0, 20.0, 52.0), (15.0, 15.0, 30.0), KIDNEY_BITE)
KIDNEY_ML, KIDNEY_NOMINAL_ML = (125.0, 175.0), 120.0
GALLBLADDER = Blob((48.0, 38.0, -23.0), (13.0, 13.0, 30.0), (35.0, -15.0, 0.0))
GALLBLADDER_ML, GALLBLADDER_NOMINAL_ML = (28.0, 50.0), 21.0
# Adrenal: inverted V in axial slices, two thin limbs diverging posteriorly from an apex placed
# relative to the kidney's upper pole; limb semi-axes are (length, thickness, height).
ADRENAL_APEX_OFFSET = {"right": (-8.0, 20.0, 14.0), "left": (10.0, 20.0, 4.0)}
ADRENAL_LIMB_SEMI, ADRENAL_LIMB_SPREAD_DEG = (12.0, 3.5, 14.0), 25.0
ADRENAL_ML, ADRENAL_NOMINAL_ML = (4.0, 7.0), 4.5
PANCREAS = Tube(
    (
        (30.0, 14.0, -37.0, 17.0),
        (6.0, 24.0, -25.0, 12.0),
        (-26.0, 18.0, -15.0, 12.0),
        (-62.0, -8.0, -1.0, 10.0),
        (-78.0, -22.0, 7.0, 8.0),
    )
)
PANCREAS_ML, PANCREAS_NOMINAL_ML = (64.0, 82.0), 68.5
STOMACH = Tube(
    (
        (-40.0, -12.0, 77.0, 26.0),
        (-52.0, 4.0, 51.0, 30.0),
        (-48.0, 22.0, 25.0, 27.0),
        (-26.0, 36.0, 5.0, 20.0),
        (0.0, 38.0, -3.0, 15.0),
        (18.0, 30.0, -7.0, 11.0),
    ),
    wall=4.5,
)
STOMACH_ML, STOMACH_NOMINAL_ML = (220.0, 420.0), 330.0
ESOPHAGUS = Tube(
    ((-4.0, 18.0, 145.0, 8.0), (-14.0, 16.0, 110.0, 8.0), (-28.0, 2.0, 87.0, 9.0), (-38.0, -8.0, 77.0, 9.0))
)
PORTAL_SPLENIC_VEIN = Tube(
    (
        (-72.0, -30.0, 7.0, 5.0),
        (-40.0, -4.0, -9.0, 5.5),
        (-10.0, 6.0, -19.0, 6.0),
        (8.0, 8.0, -21.0, 6.5),
        (24.0, 12.0, -7.0, 7.0),
        (40.0, 14.0, 11.0, 7.0),
    )
)
DUODENUM = Tube(
    (
        (18.0, 30.0, -7.0, 11.0),
        (44.0, 18.0, -13.0, 12.0),
        (54.0, 10.0, -33.0, 12.0),
        (50.0, 8.0, -57.0, 12.0),
        (20.0, 6.0, -69.0, 11.0),
        (-12.0, 6.0, -65.0, 10.0),
    ),
    wall=3.0,
)
COLON = (  # ascending, transverse and descending colon
    Tube(
        (
            (86.0, 4.0, -165.0, 24.0),
            (86.0, 8.0, -75.0, 22.0),
            (74.0, 26.0, -47.0, 20.0),
            (40.0, 58.0, -55.0, 20.0),
            (-20.0, 60.0, -49.0, 20.0),
            (-70.0, 36.0, -27.0, 20.0),
            (-90.0, 6.0, -55.0, 20.0),
            (-90.0, 4.0, -165.0, 20.0),
        ),
        wall=3.0,
    ),
)
SMALL_BOWEL_BOX = ((-60.0, -5.0, -150.0), (60.0, 55.0, -75.0))  # region for random small-bowel loops
