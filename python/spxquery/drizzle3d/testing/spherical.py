"""Spherical geometry for the simulated TAP service: convex polygons against points and caps.

Angles in degrees at the interface, unit vectors inside. Polygons are flat lists
``[ra1, dec1, ra2, dec2, ...]`` of a convex spherical polygon in either winding, the form of
the archive's ``poly`` column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _unit(ra_deg: float, dec_deg: float) -> np.ndarray:
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    return np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between unit vectors (radians), accurate at small separations."""
    return math.atan2(float(np.linalg.norm(np.cross(a, b))), float(np.dot(a, b)))


def _arc_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Angular distance (radians) from point p to the minor great-circle arc a-b."""
    n = np.cross(a, b)
    nn = float(np.linalg.norm(n))
    if nn < 1e-15:
        return _angle(p, a)
    n = n / nn
    f = p - float(np.dot(p, n)) * n
    fn = float(np.linalg.norm(f))
    if fn > 1e-15:
        f = f / fn
        # f lies on the arc when it is between a and b along the great circle
        if float(np.dot(np.cross(a, f), n)) >= 0.0 and float(np.dot(np.cross(f, b), n)) >= 0.0:
            return abs(math.asin(max(-1.0, min(1.0, float(np.dot(p, n))))))
    return min(_angle(p, a), _angle(p, b))


def _vertices(poly: Sequence[float]) -> list[np.ndarray]:
    coords = [float(v) for v in poly]
    if len(coords) < 6 or len(coords) % 2:
        raise ValueError(f"polygon needs >= 3 (ra, dec) pairs, got {len(coords)} numbers")
    return [_unit(coords[i], coords[i + 1]) for i in range(0, len(coords), 2)]


def _point_in_convex_polygon(p: np.ndarray, verts: Sequence[np.ndarray]) -> bool:
    """True when p lies inside (or on) a convex spherical polygon (either winding)."""
    signs = [float(np.dot(np.cross(verts[i], verts[(i + 1) % len(verts)]), p)) for i in range(len(verts))]
    return all(s >= -1e-15 for s in signs) or all(s <= 1e-15 for s in signs)


def polygon_intersects_circle(poly: Sequence[float], ra: float, dec: float, radius: float) -> bool:
    """True when a convex spherical polygon (flat [ra1, dec1, ra2, dec2, ...], deg)
    and the cap of ``radius`` deg around (ra, dec) share any point.

    Tested exactly: the centre inside the polygon, or any edge arc (including
    its vertices) closer to the centre than ``radius``.
    """
    verts = _vertices(poly)
    p = _unit(ra, dec)
    if _point_in_convex_polygon(p, verts):
        return True
    r = math.radians(radius)
    return any(_arc_distance(p, verts[i], verts[(i + 1) % len(verts)]) <= r for i in range(len(verts)))


def polygon_contains_point(poly: Sequence[float], ra: float, dec: float) -> bool:
    """True when the point (ra, dec) (deg) is inside the convex polygon."""
    return _point_in_convex_polygon(_unit(ra, dec), _vertices(poly))


def square_poly(ra: float, dec: float, half_deg: float) -> list[float]:
    """Corners (deg, flat list, counter-clockwise on the sky) of a square of
    half-side ``half_deg`` centred on (ra, dec)."""
    c = math.cos(math.radians(dec))
    d = half_deg / max(c, 1e-6)
    return [
        (ra + d) % 360.0, dec - half_deg,
        (ra - d) % 360.0, dec - half_deg,
        (ra - d) % 360.0, dec + half_deg,
        (ra + d) % 360.0, dec + half_deg,
    ]
