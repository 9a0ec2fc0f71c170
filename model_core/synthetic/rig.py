"""The demo head's articulation rig: parameters -> vertex displacements.

Parameters (one row per frame, all 0 at rest, roughly 0..1):
  jaw_open        rotation of the jaw about a hinge in front of the ears (1 = 16 degrees)
  lip_round       lips drawn towards the mouth centre and pushed forward (oo, w)
  lip_protrude    lips pushed forward (sh, ch, r)
  lip_spread      mouth corners drawn outwards and back (ee, smile)
  lip_close       the lower lip follows the upper lip instead of the jaw (p, b, m: 1 closes the mouth)
  lip_press       both lips pressed back against the teeth
  upper_lip_raise the upper lip lifted
  lower_lip_tuck  the lower lip drawn up and back under the upper teeth (f, v)
Weights are smooth functions of the position on the neutral head, with a sharp split only along
the mouth slit, so the upper lip never follows the jaw.
"""
from __future__ import annotations

import numpy as np

from .head import DemoHead

PARAMETERS = ("jaw_open", "lip_round", "lip_protrude", "lip_spread", "lip_close", "lip_press",
              "upper_lip_raise", "lower_lip_tuck")
JAW_HINGE = np.array([0.0, -0.004, -0.004])
JAW_MAX_ANGLE = np.radians(16.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class Rig:
    def __init__(self, head: DemoHead):
        p = head.vertices.astype(np.float64)
        x, y, z = p.T
        mouth = p[head.landmarks["upper_lip_center"]]
        corner_x = abs(p[head.landmarks["mouth_corner_left"], 0])
        lower_copy = np.zeros(len(p), bool)
        lower_copy[head.lower_lip_slit] = True
        upper_copy = np.zeros(len(p), bool)
        upper_copy[head.upper_lip_slit] = True

        # Jaw: below a line that runs along the mouth at the front and rises towards the hinge.
        rise = _smoothstep((mouth[2] - 0.01 - z) / 0.07)  # 0 at the lips, 1 near the hinge
        line = mouth[1] + rise * (JAW_HINGE[1] + 0.012 - mouth[1])
        width = 0.002 + 0.016 * _smoothstep((np.abs(x) - 0.8 * corner_x) / 0.02)
        jaw = _smoothstep(0.5 + (line - y) / (2 * width))
        jaw *= _smoothstep((z + 0.025) / 0.04) * _smoothstep((y + 0.17) / 0.05)
        jaw[upper_copy], jaw[lower_copy] = 0.0, 1.0
        below = lower_copy | ((y < line) & ~upper_copy)

        def blob(centre_y, radii):
            d = ((x / radii[0]) ** 2 + ((y - centre_y) / radii[1]) ** 2 + ((z - mouth[2]) / radii[2]) ** 2)
            return np.exp(-d)

        self.upper_lip = np.where(below, 0.0, blob(mouth[1] + 0.004, (0.026, 0.010, 0.025)))
        self.lower_lip = np.where(below, blob(mouth[1] - 0.004, (0.024, 0.011, 0.025)), 0.0)
        lips = self.upper_lip + self.lower_lip
        self.jaw = jaw
        self.relative = p - JAW_HINGE
        self.vertex_count = len(p)
        zeros = np.zeros_like(p)
        # Linear parameters: one displacement field per unit of the parameter.
        fields = {name: zeros.copy() for name in PARAMETERS[1:]}
        fields["lip_round"][:, 0] = -0.35 * x * lips
        fields["lip_round"][:, 2] = 0.004 * lips
        fields["lip_protrude"][:, 2] = 0.006 * lips
        fields["lip_spread"][:, 0] = 0.22 * x * lips
        fields["lip_spread"][:, 1] = 0.0015 * lips
        fields["lip_spread"][:, 2] = -0.004 * np.clip(np.abs(x) / corner_x, 0, 1) * lips
        fields["lip_press"][:, 2] = -0.002 * lips
        fields["upper_lip_raise"][:, 1] = 0.004 * self.upper_lip
        fields["lower_lip_tuck"][:, 1] = 0.004 * self.lower_lip
        fields["lower_lip_tuck"][:, 2] = -0.005 * self.lower_lip
        self.fields = np.stack([fields[name] for name in PARAMETERS[1:]]).astype(np.float32)  # (P-1, V, 3)
        # lip_close keeps the lower lip with the upper one: it removes the jaw's pull around the
        # mouth line, along the whole slit and fading out over a centimetre beyond the corners. The
        # release is smooth across the line (the upper lip has no jaw weight to release).
        beyond_corner = _smoothstep((np.abs(x) - corner_x) / 0.012)
        self.close_release = (1.0 - beyond_corner) * np.exp(-((y - mouth[1]) / 0.012) ** 2)

    def displacements(self, params: np.ndarray) -> np.ndarray:
        """(frames, len(PARAMETERS)) -> (frames, V, 3) float32."""
        params = np.asarray(params, np.float64)
        angle = JAW_MAX_ANGLE * params[:, 0]
        weight = self.jaw[None, :] * (1.0 - np.clip(params[:, 4:5], 0, 1) * self.close_release[None, :])
        ry, rz = self.relative[:, 1], self.relative[:, 2]
        cos, sin = np.cos(angle)[:, None] - 1.0, np.sin(angle)[:, None]
        out = np.zeros((len(params), self.vertex_count, 3), np.float32)
        out[:, :, 1] = weight * (ry * cos - rz * sin)
        out[:, :, 2] = weight * (ry * sin + rz * cos)
        out += np.tensordot(params[:, 1:].astype(np.float32), self.fields, axes=1)
        return out
