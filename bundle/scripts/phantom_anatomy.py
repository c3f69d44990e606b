"""Geometry of the synthetic abdominal CT phantom (see ``scripts.phantom``, which draws it).

Holds the tissue table (HU, BTCV label), the organ geometry table, the two shape primitives the
organs are made of (rotated ellipsoids that can be bent, tapered, bitten and cut, with wavy surfaces;
and tubes) and their per-case random jitter. Positions are world millimetres in RAS+ (+x patient right,
+y anterior, +z superior) for an abdominal cavity of nominal size centred on the origin. Organ volumes,
sizes and positions follow the published adult ranges cited next to each constant (see "Anatomy" below);
shapes are drawn from textbook anatomy. No number here was fitted to any patient scan.
"""

from __future__ import annotations

import functools
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
    "rotation",
    "oriented",
    "cut_row",
    "bite_row",
    "jitter_blob",
    "jitter_tube",
    "draw_volume",
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


def oriented(first: Sequence[float], third: Sequence[float]) -> tuple[float, float, float]:
    """Euler angles (degrees, see ``rotation``) of the frame whose local axis 2 points along ``third`` and
    local axis 0 along ``first`` (made orthogonal to ``third``); local axis 1 completes a right-handed frame."""
    a2 = np.asarray(third, float) / np.linalg.norm(third)
    a0 = np.asarray(first, float) - np.dot(first, a2) * a2
    a0 /= np.linalg.norm(a0)
    rot = np.column_stack([a0, np.cross(a2, a0), a2])
    ay = np.arcsin(np.clip(rot[0, 2], -1.0, 1.0))
    return tuple(
        float(np.rad2deg(a)) for a in (np.arctan2(-rot[1, 2], rot[2, 2]), ay, np.arctan2(-rot[0, 1], rot[0, 0]))
    )


class Blob(NamedTuple):
    """Rotated, deformed ellipsoid; its local axes are the columns of ``rotation(euler_deg)`` and its local
    coordinates ``q`` are measured in units of the semi-axes.

    ``bend`` (b1, b2) curves it: local axis 0 is shifted by ``b1 * q1**2 + b2 * q2**2``, so positive values
    make the surface facing +axis 0 concave (a bean, a crescent). ``taper`` scales the cross-section across
    axes 0 and 1 by ``1 + taper * q2`` (a pear, wide where ``taper * q2 > 0``). ``bites`` are ellipsoids
    (centre, semi-axes; in ``q`` units) cut away from it; ``cuts`` rows (n0, n1, n2, d) keep only
    ``n . q <= d`` (a flat face and a sharp border where two faces meet). ``waves`` rows (amplitude,
    frequency, phase, unit direction xyz) displace its surface radially. ``power`` > 2 makes it a
    super-ellipsoid (``|q0|^p + |q1|^p + |q2|^p <= 1``), fuller towards the corners of its box.
    ``grow_axes`` and ``top_anchor`` say how ``scaled`` changes its volume: the semi-axes' relative shares
    of it, and how much of axis 2's growth goes downwards (0: about the centre, 1: the top stays put)."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    euler_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bites: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = ()
    waves: tuple[tuple[float, ...], ...] = ()
    bend: tuple[float, float] = (0.0, 0.0)
    taper: float = 0.0
    cuts: tuple[tuple[float, float, float, float], ...] = ()
    power: float = 2.0
    grow_axes: tuple[float, float, float] = (1.0, 1.0, 1.0)
    top_anchor: float = 0.0

    def axes(self) -> np.ndarray:
        """World directions of the local axes (columns)."""
        return rotation(self.euler_deg)

    def point(self, q: Sequence[float]) -> np.ndarray:
        """World position (mm) of the local point ``q`` (semi-axis units, before bending)."""
        return np.asarray(self.centre) + self.axes() @ (np.asarray(q, float) * self.semi)

    def local_reach(self) -> np.ndarray:
        """Half-size (mm) along the local axes of a box around the blob."""
        grow = (1.0 + sum(w[0] for w in self.waves)) * (1.0 + abs(self.taper))
        reach = np.multiply(self.semi, grow)
        reach[0] += self.semi[0] * (abs(self.bend[0]) + abs(self.bend[1])) * grow**2
        return reach

    def reach(self) -> np.ndarray:
        """Half-size (mm) of the world axis-aligned box around the blob."""
        return np.abs(self.axes()) @ self.local_reach()

    def radius(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised radius on the broadcast grid of ``x, y, z`` (mm): <= 1 inside, inf well outside."""
        # Python floats keep the arithmetic in the grid's precision (float32 on the canvas)
        rot, semi = self.axes().tolist(), [float(v) for v in self.semi]
        d = (x - float(self.centre[0]), y - float(self.centre[1]), z - float(self.centre[2]))
        q = [(rot[0][k] * d[0] + rot[1][k] * d[1] + rot[2][k] * d[2]) / semi[k] for k in range(3)]
        q = np.broadcast_arrays(*q)
        q_shape = q[0].shape
        grow = self.local_reach() / np.asarray(self.semi)
        near = np.flatnonzero((np.abs(q[0]) <= grow[0]) & (np.abs(q[1]) <= grow[1]) & (np.abs(q[2]) <= grow[2]))
        q = [qk.ravel()[near] for qk in q]
        s = [q[0] - self.bend[0] * q[1] ** 2 - self.bend[1] * q[2] ** 2, q[1], q[2]]
        if self.taper:
            f = np.maximum(1.0 + self.taper * q[2], 0.15)
            s[0], s[1] = s[0] / f, s[1] / f
        if self.power == 2.0:
            rn = np.sqrt(s[0] ** 2 + s[1] ** 2 + s[2] ** 2) + 1e-6
        else:
            p = self.power
            rn = (np.abs(s[0]) ** p + np.abs(s[1]) ** p + np.abs(s[2]) ** p) ** (1.0 / p) + 1e-6
        close = rn <= 1.0 + sum(w[0] for w in self.waves)  # beyond the largest bulge it is outside anyway
        near, rn, q, s = near[close], rn[close], [qk[close] for qk in q], [sk[close] for sk in s]
        bump = sum(
            a * np.cos(np.pi * f * (s[0] * n0 + s[1] * n1 + s[2] * n2) / rn + ph) for a, f, ph, n0, n1, n2 in self.waves
        )
        for centre, semi in self.bites:
            rn[sum(((qk - c) / w) ** 2 for qk, c, w in zip(q, centre, semi)) <= 1.0] = np.inf
        for n0, n1, n2, dist in self.cuts:
            rn[n0 * q[0] + n1 * q[1] + n2 * q[2] > dist] = np.inf
        r = np.full(q_shape, np.inf)
        r.ravel()[near] = rn / (1.0 + bump)
        return r

    def volume(self, step: float | None = None) -> float:
        """Volume (mL) inside ``radius <= 1``, counted on a grid of ``step`` mm (default: fine enough)."""
        h = float(np.clip(min(self.semi) / 4.0, 0.4, 4.0)) if step is None else step
        local = self._replace(centre=(0.0, 0.0, 0.0), euler_deg=(0.0, 0.0, 0.0))
        x, y, z = (np.arange(-e, e + h, h) for e in local.local_reach())
        inside = local.radius(x[:, None, None], y[None, :, None], z[None, None, :]) <= 1.0
        return float(np.count_nonzero(inside)) * h**3 / 1000.0

    def scaled(self, factor: float) -> Blob:
        """The same shape with its volume times ``factor ** 3``, shared between the semi-axes by
        ``grow_axes`` and placed by ``top_anchor``."""
        share = np.asarray(self.grow_axes, float)
        semi = np.multiply(self.semi, float(factor) ** (3.0 * share / share.sum()))
        drop = self.top_anchor * (semi[2] - self.semi[2])
        return self._replace(semi=tuple(semi), centre=tuple(np.asarray(self.centre) - drop * self.axes()[:, 2]))

    def with_volume(self, target_ml: float) -> Blob:
        """The same shape scaled (see ``scaled``) to ``target_ml`` mL."""
        return self.scaled((target_ml / max(self.volume(), 1e-9)) ** (1.0 / 3.0))


class Tube(NamedTuple):
    """Smooth tube through control points ``(x, y, z, radius)`` (mm); ``wall`` > 0 makes it hollow.
    ``stretch`` > 1 elongates it along z (cross-sections of a horizontal tube become upright ellipses)."""

    points: tuple[tuple[float, float, float, float], ...]
    wall: float = 0.0
    stretch: float = 1.0

    def top(self) -> float:
        """Most anterior y reached by the control spheres (the non-dependent side when supine)."""
        return max(p[1] + p[3] for p in self.points)

    def samples(self) -> np.ndarray:
        """Points ``(x, y, z / stretch, radius)`` along the smooth centre line, 3 to 8 mm apart (closer
        for thinner tubes; the straight segments between them stay within a fraction of a mm of the
        curve). Read-only (cached)."""
        return _tube_samples(tuple(tuple(float(v) for v in p) for p in self.points), float(self.stretch))

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside; along z divided by ``stretch``) on the broadcast grid of
        ``x, y, z``; inf far away."""
        pts = self.samples()
        z = z / self.stretch
        axes = (x.ravel(), y.ravel(), z.ravel())
        sdf = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.inf, np.float32)
        a, b = pts[:-1], pts[1:]
        r = np.maximum(a[:, 3], b[:, 3])[:, None]
        lo, hi = np.minimum(a[:, :3], b[:, :3]) - r, np.maximum(a[:, :3], b[:, :3]) + r
        first = np.column_stack([np.searchsorted(ax, lo[:, k], "left") for k, ax in enumerate(axes)])
        last = np.column_stack([np.searchsorted(ax, hi[:, k], "right") for k, ax in enumerate(axes)])
        for i in np.flatnonzero(np.all(last > first, axis=1)):  # segments whose box meets the grid
            sl = tuple(slice(first[i, k], last[i, k]) for k in range(3))
            (ax_, ay_, az_, ar), (bx_, by_, bz_, br) = a[i].tolist(), b[i].tolist()  # floats: grid precision
            dx, dy, dz = (
                axes[0][sl[0], None, None] - ax_,
                axes[1][None, sl[1], None] - ay_,
                axes[2][None, None, sl[2]] - az_,
            )
            ux, uy, uz = bx_ - ax_, by_ - ay_, bz_ - az_
            t = np.clip((dx * ux + dy * uy + dz * uz) / max(ux * ux + uy * uy + uz * uz, 1e-9), 0.0, 1.0)
            dist = np.sqrt((dx - t * ux) ** 2 + (dy - t * uy) ** 2 + (dz - t * uz) ** 2)
            view = sdf[sl]
            np.minimum(view, dist - (ar + t * (br - ar)), out=view)
        return sdf

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box (lo, hi) in mm that contains the tube."""
        pts = np.asarray(self.points, float)
        pad = 1.3 * pts[:, 3].max() * np.array([1.0, 1.0, self.stretch])  # the spline may overshoot a little
        return pts[:, :3].min(0) - pad, pts[:, :3].max(0) + pad

    def volume(self) -> float:
        """Volume (mL) of the solid tube: conical frusta between centre-line samples plus two hemispherical
        end caps (overlaps at bends are counted twice, so keep bends gentle)."""
        pts = self.samples()
        h = np.linalg.norm(np.diff(pts[:, :3], axis=0), axis=1)
        r0, r1 = pts[:-1, 3], pts[1:, 3]
        body = float(np.sum(np.pi * h * (r0**2 + r0 * r1 + r1**2) / 3.0))
        caps = 2.0 / 3.0 * np.pi * (pts[0, 3] ** 3 + pts[-1, 3] ** 3)
        return (body + caps) * self.stretch / 1000.0

    def with_volume(self, target_ml: float) -> Tube:
        """The same centre line with every radius scaled so that the solid tube holds ``target_ml`` mL."""
        tube = self
        for _ in range(3):  # volume is nearly quadratic in the radius scale; the caps make it a little more
            factor = np.sqrt(target_ml / max(tube.volume(), 1e-9))
            pts = np.array(tube.points, float)
            pts[:, 3] *= factor
            tube = tube._replace(points=tuple(map(tuple, pts)))
        return tube


@functools.lru_cache(maxsize=128)
def _tube_samples(points: tuple[tuple[float, ...], ...], stretch: float) -> np.ndarray:
    pts = np.array(points)
    pts[:, 2] /= stretch
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts[:, :3], axis=0), axis=1))]
    step = float(np.clip(0.6 * np.median(pts[:, 3]), 3.0, 8.0))
    pts = CubicSpline(chord, pts, axis=0)(np.linspace(0.0, chord[-1], max(2, int(chord[-1] / step) + 2)))
    pts[:, 3] = np.maximum(pts[:, 3], 1.0)
    pts.flags.writeable = False
    return pts


def random_waves(rng: np.random.Generator, n: int = 3, amplitude: tuple[float, float] = (0.02, 0.05)):
    """Low-frequency radial surface displacement of a few percent for ``Blob.waves``."""
    normal = rng.normal(size=(n, 3))
    rows = np.column_stack(
        [
            rng.uniform(*amplitude, n),
            rng.uniform(0.8, 2.0, n),
            rng.uniform(0, 2 * np.pi, n),
            normal / np.linalg.norm(normal, axis=1, keepdims=True),
        ]
    )
    return tuple(map(tuple, rows))


def draw_volume(published_ml: tuple[float, float], percentile: float, margin: float | None = None) -> float:
    """Target volume (mL) for one case: ``percentile`` (0..1) of the published range shrunk by ``margin``
    (default ``VOLUME_MARGIN``) of its width at each end, so that voxelisation and contact with
    neighbours keep the labelled volume inside the published range."""
    lo, hi = published_ml
    pad = (VOLUME_MARGIN if margin is None else margin) * (hi - lo)
    return float(lo + pad + np.clip(percentile, 0.0, 1.0) * (hi - lo - 2 * pad))


def jitter_blob(
    rng: np.random.Generator,
    blob: Blob,
    size: float,
    scale: float = 1.0,
    shift: float = 10.0,
    turn: float = 8.0,
    shape: float = 0.0,
    aspect: float = 0.08,
    waves: tuple[float, float] = (0.02, 0.05),
) -> Blob:
    """Per-case blob: centre scaled by ``size`` (the case's cavity scale) and shifted up to ``shift`` mm,
    semi-axes times ``scale`` with aspect jitter up to ``aspect`` (relative), rotation jitter up to ``turn``
    degrees, random surface waves of relative amplitude ``waves``, and (``shape`` > 0) bend, taper, bites
    and cuts varied by up to ``shape`` (relative bend and taper, absolute in semi-axis units for bite
    centres and cut offsets)."""
    stretch = np.exp(rng.uniform(-aspect, aspect, 3))
    out = blob._replace(
        centre=tuple(np.multiply(blob.centre, size) + rng.uniform(-shift, shift, 3)),
        semi=tuple(np.multiply(blob.semi, scale * stretch / np.prod(stretch) ** (1 / 3))),
        euler_deg=tuple(np.add(blob.euler_deg, rng.uniform(-turn, turn, 3))),
        waves=random_waves(rng, amplitude=waves),
    )
    if shape > 0:
        out = out._replace(
            bend=tuple(np.multiply(blob.bend, rng.uniform(1 - shape, 1 + shape, 2))),
            taper=blob.taper * rng.uniform(1 - shape, 1 + shape),
            bites=tuple((tuple(np.add(c, rng.uniform(-shape, shape, 3))), s) for c, s in blob.bites),
            cuts=tuple((*c[:3], c[3] + rng.uniform(-shape, shape)) for c in blob.cuts),
        )
    return out


def jitter_tube(
    rng: np.random.Generator,
    tube: Tube,
    size: float,
    radius_scale: float = 1.0,
    shift: float | Sequence[float] = 8.0,
    wobble: float = 4.0,
) -> Tube:
    """Per-case tube: points scaled by ``size``, shifted together up to ``shift`` mm (or exactly by a given
    3-vector) and each up to ``wobble`` mm; radii times ``radius_scale`` and +-8 %."""
    pts = np.array(tube.points, float)
    offset = rng.uniform(-shift, shift, 3) if np.isscalar(shift) else np.asarray(shift, float)
    pts[:, :3] = pts[:, :3] * size + offset + rng.uniform(-wobble, wobble, (len(pts), 3))
    pts[:, 3] *= radius_scale * rng.uniform(0.92, 1.08, len(pts))
    return tube._replace(points=tuple(map(tuple, pts)))


# ---------------------------------------------------------------------------------------------------------
# Anatomy. Positions are world mm (RAS+) at cavity scale 1; z = 0 is the transpyloric plane (L1 vertebra),
# vertebral levels are about 34 mm apart (``VERTEBRA_PERIOD``). Every organ's volume is drawn per case from
# the published adult range written next to it, shrunk by ``VOLUME_MARGIN`` at each end; its position, size
# and rotation vary per case (``jitter_blob``, ``jitter_tube``). References (abbreviations used below):
#   [Geraghty]  Geraghty EM, Boone JM, McGahan JP, Jain K. Normal organ volume assessment from abdominal CT.
#               Abdom Imaging 2004;29:482-490 (149 adults, manual CT volumetry; mean volumes women / men:
#               liver 1411 / 1710 mL, spleen 179.8 / 238.4 mL, kidney 156.5 / 193.1 mL, pancreas
#               64.4 / 87.4 mL; smallest mean 4.4 mL, the female left adrenal).
#   [Kratzer]   Kratzer W et al. Factors affecting liver size: a sonographic survey of 2080 subjects.
#               J Ultrasound Med 2003;22:1155-1161 (liver span at the midclavicular line 14.0 +- 1.7 cm).
#   [Caglar]    Caglar V et al. Determination of normal splenic volume in relation to age, gender and body
#               habitus: a stereological study on CT. Folia Morphol 2014;73:331-338 (212 adults: volume
#               198 +- 88 mL, length 10.0 +- 2.1 cm, width 8.9 +- 1.6 cm, thickness 4.6 +- 0.8 cm).
#   [Glodny]    Glodny B et al. Normal kidney size and its influencing factors - a 64-slice MDCT study of 1040
#               asymptomatic patients. BMC Urol 2009;9:19 (pole-to-pole length right 108.5 +- 12.2 mm,
#               left 111.3 +- 12.6 mm).
#   [Wang]      Wang X et al. Evaluation of normal adrenal gland volume by 64-slice CT. Chin Med Sci J
#               2012;27:220-224 (left 4.23 +- 0.74 mL, range 2.85-5.83; right 4.26 +- 0.86 mL, 2.59-6.56).
#   [John]      John R et al. Normal adrenal gland thickness on computerized tomography in an Asian Indian
#               adult population. Indian J Radiol Imaging 2018;28:465-469 (limb thickness 4.1-4.9 +- 1.1 mm,
#               body 7.2-8.8 mm).
#   [Simpson]   Simpson W. Imaging of the pancreas, CRC Press 2017, doi:10.1201/9781315381558-43 (length
#               12-15 cm; head up to 3.0-3.5 cm, body up to 2.5 cm, tail up to 2.0 cm; head in the duodenal
#               C-loop, tail towards the splenic hilum).
#   [Moore]     Moore KL, Dalley AF, Agur AMR. Clinically Oriented Anatomy, 7th ed. 2014, ch. 2 (abdomen):
#               gallbladder 7-10 cm long, 30-50 mL, pear-shaped, fundus at the 9th costal cartilage; kidneys
#               T12-L3, the right slightly lower, hila near the transpyloric plane ~5 cm from the midline;
#               spleen in the left hypochondrium against ribs 9-11, ~12 cm long and 7 cm wide; pancreas
#               across L1-L2; stomach J-shaped, fundus under the left dome of the diaphragm; suprarenal
#               glands on the superomedial poles of the kidneys, the right pyramidal, the left crescentic.
#   [Breen]     Breen M et al. Performance characteristics of the measurement of gastric volume using
#               SPECT. Neurogastroenterol Motil 2011;23:308-315 (433 subjects; fasting gastric volume
#               varies between people by 32.6 % (coefficient of variation)).
# ---------------------------------------------------------------------------------------------------------
VOLUME_MARGIN = 0.1
"""Fraction of each published volume range left unused at either end (room for voxelisation)."""

# Body: organ positions scale with the abdominal cavity; fat and muscle wrap it, so obese bodies are larger.
CAVITY_SEMI_AXES = (120.0, 90.0)  # lateral, antero-posterior (mm)
CAVITY_SCALE = (0.95, 1.05)
SUBCUTANEOUS_FAT = (6.0, 20.0)  # thickness range (mm), varies +-25 % around the body
MUSCLE_WALL = (8.0, 12.0)
VERTEBRA_Y, VERTEBRA_SEMI, CANAL_RADIUS = -40.0, (21.0, 16.0), 9.0
VERTEBRA_PERIOD, DISC_THICKNESS = 34.0, 7.0
PARASPINAL = Blob((36.0, -82.0, 0.0), (24.0, 17.0, 400.0))  # mirrored to the left
PSOAS_X, PSOAS_TOP_Z, PSOAS_MAX_RADIUS = 32.0, -25.0, 22.0
AORTA_X, AORTA_RADIUS, IVC_X, IVC_RADIUS, BIFURCATION_Z = -14.0, 11.5, 24.0, 11.0, -115.0


def cut_row(blob: Blob, normal, point) -> tuple[float, float, float, float]:
    """``Blob.cuts`` row (local units of ``blob``) removing the world half-space on the side of ``normal``
    of the plane through ``point``."""
    n = (blob.axes().T @ np.asarray(normal, float)) * blob.semi
    d = float(np.dot(normal, np.subtract(point, blob.centre)))
    return (*(n / np.linalg.norm(n)), d / float(np.linalg.norm(n)))


def bite_row(blob: Blob, centre, semi):
    """``Blob.bites`` row (local units of ``blob``) for an ellipsoid at world ``centre`` whose semi-axes
    (mm) lie along the blob's local axes."""
    return tuple(blob.axes().T @ np.subtract(centre, blob.centre) / blob.semi), tuple(np.divide(semi, blob.semi))


# Liver: 1250-1900 mL ([Geraghty] means 1411 / 1710 mL); craniocaudal span 14.0 +- 1.7 cm at the
# midclavicular line ([Kratzer]); dome under the right hemidiaphragm about 10 cm above L1 (T10 in
# inspiration), inferior tip of the right lobe at L2-L3 ([Moore]). One super-ellipsoid filling the right
# upper quadrant (its right end tilted down, its left end turned forwards), cut by an oblique visceral
# plane (sharp inferior border, low on the right, high on the left, lower anteriorly) so that the right
# lobe is large and the left lobe a thin wedge reaching across the midline in front of the stomach
# (about a fifth of the volume left of the midline); bites for the spine and crura, the stomach and
# spleen behind the left lobe, the heart on top and the right kidney under the right lobe.
_LIVER = Blob((10.0, 4.0, 18.0), (98.0, 78.0, 86.0), (0.0, 14.0, -18.0), power=2.6)
LIVER = _LIVER._replace(
    bites=(
        bite_row(_LIVER, (-4.0, -64.0, 0.0), (40.0, 40.0, 400.0)),  # vertebral column and crura
        bite_row(_LIVER, (-95.0, -62.0, 20.0), (110.0, 110.0, 130.0)),  # stomach and spleen behind the left lobe
        bite_row(_LIVER, (-30.0, 30.0, 150.0), (90.0, 100.0, 85.0)),  # heart on the central tendon
        bite_row(_LIVER, (62.0, -78.0, -30.0), (40.0, 46.0, 62.0)),  # right kidney (renal impression)
    ),
    cuts=(cut_row(_LIVER, (-0.45, -0.2, -1.0), (0.0, 0.0, 8.0)),),  # visceral surface
    grow_axes=(0.7, 0.8, 1.5),  # a bigger liver is mostly taller, with its dome under the diaphragm
    top_anchor=0.7,
)
LIVER_ML = (1250.0, 1900.0)
# Gallbladder: 30-50 mL, 7-10 cm long, pear-shaped ([Moore]). A tapered ellipsoid in the liver's frame (it
# follows the liver): fundus wide, anterior and low at the liver's inferior border (the 9th costal
# cartilage, right of the midline), neck narrow, pointing up, back and to the left towards the porta
# hepatis.
GALLBLADDER = Blob((43.0, 30.0, -10.0), (14.0, 13.0, 40.0), oriented((1.0, 0.0, 0.0), (-23.0, -47.0, 42.0)), taper=-0.6)
GALLBLADDER_ML = (30.0, 50.0)
# Spleen: 120-290 mL ([Caglar] 198 +- 88 mL; [Geraghty] means 180 / 238 mL), about 11 x 7 x 4 cm. A
# crescent: flattened ellipsoid bent so that its diaphragmatic surface is convex against the left
# posterolateral ribs (moved per case against the body wall) and its visceral surface concave, facing
# antero-medially, with a notch at the hilum; long axis along the 10th rib (upper pole posterior and
# medial), behind ribs 9-11 ([Moore]).
SPLEEN_HILUM = (1.0, 0.0, -0.3)  # local point of the hilum, where the pancreatic tail and splenic vein end
SPLEEN = Blob(
    (-86.0, -36.0, 40.0),
    (19.0, 38.0, 55.0),
    oriented((0.55, 0.8, 0.0), (0.25, -0.35, 0.9)),
    bites=((SPLEEN_HILUM, (0.35, 0.22, 0.3)),),
    bend=(0.6, 0.3),
)
SPLEEN_ML = (120.0, 290.0)
SPLEEN_WALL_GAP = (0.0, 4.0)  # mm between its diaphragmatic surface and the body wall
# Kidneys: 125-225 mL each ([Geraghty] means 156.5 / 193.1 mL), 10-12 cm long ([Glodny]); bean-shaped:
# bent so the medial border is concave, with a hilum (renal sinus) facing antero-medially about 5 cm from
# the midline; upper poles medial and posterior; between T12 and L3, the right 1-2 cm lower than the left
# ([Moore]).
KIDNEY_HILUM = (((0.9, 0.0, 0.0), (0.55, 0.36, 0.32)),)  # local +axis 0 faces antero-medially
RIGHT_KIDNEY = Blob(
    (66.0, -44.0, -32.0),
    (30.0, 22.0, 55.0),
    oriented((-0.75, 0.65, 0.0), (-0.2, -0.2, 1.0)),
    KIDNEY_HILUM,
    bend=(0.0, 0.4),
)
LEFT_KIDNEY = RIGHT_KIDNEY._replace(
    centre=(-66.0, -44.0, -17.0), euler_deg=oriented((0.75, 0.65, 0.0), (0.2, -0.2, 1.0))
)
KIDNEY_ML = (125.0, 225.0)
RIGHT_KIDNEY_DROP = (10.0, 20.0)  # how much lower (mm) the right kidney lies than the left ([Moore])
# Adrenal glands: 2.6-6.6 mL each ([Wang]); in axial slices an inverted V or Y: two thin limbs (3-6 mm
# thick, [John]) diverging posteriorly from an apex, sometimes with a short body pointing forwards; 2-4 cm
# high. The right sits above the upper pole of the right kidney behind the IVC, the left antero-medial to
# the upper pole of the left kidney ([Moore]). Apex offset from the kidney's upper pole (mm); limb
# semi-axes (length, thickness, height) in mm at scale 1.
ADRENAL_APEX_OFFSET = {"right": (-17.0, 29.0, 12.0), "left": (17.0, 33.0, -15.0)}
ADRENAL_LIMB_SEMI, ADRENAL_BODY_LENGTH = (13.0, 2.2, 15.0), (0.0, 8.0)
# limb directions in the axial plane, degrees away from straight back: medial limb slightly medial (along
# the crus, clear of the vertebral body), lateral limb postero-lateral
ADRENAL_MEDIAL_LIMB_DEG, ADRENAL_LATERAL_LIMB_DEG = (0.0, 12.0), (30.0, 45.0)
ADRENAL_ML = (2.6, 6.6)
ADRENAL_VOLUME_MARGIN = 0.2  # 3-6 mm thin limbs: their labelled volume on a 3-5 mm grid varies by +-20 %
# Pancreas: 60-100 mL ([Geraghty] means 64.4 / 87.4 mL), 12-15 cm long; head (in the duodenal C-loop,
# right of the midline, at L2) thickest, body across the aorta at L1, tail rising to the splenic hilum
# ([Simpson], [Moore]). A tube taller than deep (``stretch``); its last point is moved per case to the
# spleen's hilum.
PANCREAS = Tube(
    (
        (30.0, 8.0, -42.0, 12.0),
        (32.0, 14.0, -26.0, 14.0),
        (10.0, 18.0, -14.0, 10.0),
        (-20.0, 10.0, -6.0, 9.5),
        (-50.0, -6.0, 6.0, 8.5),
        (-74.0, -20.0, 20.0, 7.5),
    ),
    stretch=1.3,
)
PANCREAS_ML = (60.0, 100.0)
PANCREAS_TAIL_GAP = (4.0, 12.0)  # distance (mm) from the tail's tip to the spleen's hilum
SPLENIC_HILUM_APPROACH = (1.0, 0.3, 0.0)  # direction from the hilum to the tail: medial, a little forward
# Stomach: J-shaped ([Moore]): fundus under the left dome, body down the left side, antrum turning right
# and up to the pylorus right of the midline at L1; wall 4-5 mm. Its labelled volume (wall and contents)
# depends on filling, which varies by about a third between fasting people ([Breen]); 200-450 mL here.
# Supine, gas floats to the anterior (non-dependent) side above an air-fluid level that always leaves a gas
# cap in the fundus.
STOMACH = Tube(
    (
        (-40.0, -8.0, 70.0, 24.0),
        (-52.0, 14.0, 42.0, 24.0),
        (-50.0, 40.0, 8.0, 22.0),
        (-32.0, 50.0, -26.0, 19.0),
        (-4.0, 52.0, -36.0, 16.0),
        (18.0, 42.0, -18.0, 12.0),
        (24.0, 28.0, 0.0, 10.0),
    ),
    wall=4.5,
)
STOMACH_ML = (200.0, 450.0)
ESOPHAGUS = Tube(
    ((-4.0, 18.0, 145.0, 8.0), (-14.0, 16.0, 110.0, 8.0), (-28.0, 2.0, 87.0, 9.0), (-38.0, -10.0, 70.0, 9.0))
)
PORTAL_SPLENIC_VEIN = Tube(  # first point moved per case to the spleen's hilum
    (
        (-76.0, -24.0, 18.0, 5.0),
        (-44.0, -6.0, 0.0, 5.5),
        (-12.0, 6.0, -12.0, 6.0),
        (8.0, 8.0, -16.0, 6.5),
        (24.0, 12.0, -4.0, 7.0),
        (40.0, 14.0, 12.0, 7.0),
    )
)
DUODENUM = Tube(  # moves with the pancreatic head: C-loop around it
    (
        (24.0, 26.0, -2.0, 10.0),
        (46.0, 18.0, -10.0, 11.0),
        (56.0, 10.0, -30.0, 12.0),
        (52.0, 6.0, -56.0, 12.0),
        (24.0, 4.0, -70.0, 11.0),
        (-12.0, 6.0, -66.0, 10.0),
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
