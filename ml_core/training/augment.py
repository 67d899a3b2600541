"""Training-time augmentation that teaches subject invariance, vectorised over a batch.

What differs between people wearing the same IMUs is mostly how the sensor sits (a few tens of
degrees of rotation), how vigorously they move (amplitude), their pace (time warping), sensor
noise (jitter) and, for left-handed people, which side the wrist and ankle sensors are on
(a mirror image). Each is drawn per window (and per IMU where it is a sensor property):

- rotation: one random 3-D rotation per IMU and window, applied to its accelerometer,
  gyroscope and magnetometer triplets together (they share the sensor frame). Each rotation
  vector component is normal with `rotation_deg` standard deviation, so small misplacements
  are common and posture, which gravity's direction encodes, is not erased.
- amplitude: the movement (accelerometer minus its window mean, and the angular rate) of each
  IMU is scaled by a log-normal factor; gravity's magnitude and the magnetic field stay.
- time warp: every modality of a window is resampled along a smooth monotone warp
  u + a sin(pi u) / pi (ends fixed, local speed 1 + a cos(pi u), |a| <= `time_warp`).
- jitter: Gaussian noise of `jitter_std` (in normalised units) on every observed sample.
- offsets: a constant per window and channel added to the magnetometer (a sensor's hard-iron
  offset), skin temperature and heart rate, in physical units. These differ between people
  and sensors by about as much as between activities, so without them a network can tell
  its training subjects apart by them and memorise them.
- mirroring: `mirror_left_handed` reflects the wrist and ankle IMUs of left-handed subjects
  (108) onto the right-handed layout; `mirror_prob` reflects any window's wrist and ankle IMUs
  with that probability, so the model also meets left-handed layouts it cannot be told about
  at test time. A reflection across the body's sagittal plane negates the lateral axis of
  acceleration and magnetic field and the two other axes of the angular rate (a pseudovector).

Rotation, amplitude and mirroring act in physical units (the fold's normalisation undone and
redone), so they are real rotations and reflections. Missing samples stay missing and zero, and
labels are untouched. All randomness comes from the augmenter's own `torch.Generator`, seeded
from the run's seed; its state goes into every checkpoint, so a resumed run draws exactly what
a straight run would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ml_core.data.columns import (
    AXES,
    HEART_RATE,
    IMUS,
    LEFT_HANDED_SUBJECTS,
    MIRRORED_IMUS,
    MODALITIES,
)
from ml_core.data.windows import MODALITY_SLICES, normaliser
from ml_core.training.config import AugmentConfig

VECTOR_FIELDS = ("acc16", "gyro", "mag")  # per IMU, rotated together
# Reflection across the sagittal plane, per field: the lateral axis (y, as the synthetic data
# and PAMAP2's wrist/ankle mounting have it) of vectors; the other two of the angular rate.
_LATERAL_AXIS = 1
_MIRROR_SIGNS = {
    "acc16": [-1.0 if a == _LATERAL_AXIS else 1.0 for a in range(3)],
    "gyro": [1.0 if a == _LATERAL_AXIS else -1.0 for a in range(3)],
    "mag": [-1.0 if a == _LATERAL_AXIS else 1.0 for a in range(3)],
}


def rotation_matrices(rotvec: Tensor) -> Tensor:
    """Rodrigues: rotation vectors [..., 3] (axis times angle, radians) -> matrices [..., 3, 3]."""
    angle = rotvec.norm(dim=-1, keepdim=True)
    k = rotvec / angle.clamp(min=1e-12)
    zero = torch.zeros_like(k[..., 0])
    cross = torch.stack(
        [zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0], -k[..., 1], k[..., 0], zero],
        dim=-1,
    ).reshape(*k.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    sin, cos = angle.sin()[..., None], angle.cos()[..., None]
    return eye + sin * cross + (1 - cos) * (cross @ cross)


class Augmenter:
    """Augments training batches of the modalities in `channels` (all of MODALITIES by default).

    `stats` are the fold's feature statistics (to undo and redo the normalisation).
    """

    def __init__(
        self,
        config: AugmentConfig,
        stats: Mapping[str, Any],
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        mean, std = normaliser(stats, "feature stats")
        self.mean = {m: mean[s].to(self.device) for m, s in MODALITY_SLICES.items()}
        self.std = {m: std[s].to(self.device) for m, s in MODALITY_SLICES.items()}
        # An IMU's vector fields are its first nine channels, field by field: sliced, not
        # gathered (this runs on every training batch).
        self.imus = [f"imu_{imu}" for imu in IMUS]
        for imu in IMUS:
            expected = [f"{imu}_{f}_{a}" for f in VECTOR_FIELDS for a in AXES]
            assert MODALITIES[f"imu_{imu}"][:9] == expected, f"unexpected layout of imu_{imu}"
        signs = torch.tensor([_MIRROR_SIGNS[f] for f in VECTOR_FIELDS], device=self.device)
        self.mirror_signs = signs  # [3 fields, 3 axes]
        self.mirrored = {f"imu_{imu}" for imu in MIRRORED_IMUS}
        self.left_handed = torch.tensor(LEFT_HANDED_SUBJECTS, device=self.device)
        # Per modality: its offset channels and each one's offset std in normalised units.
        self.offsets: dict[str, tuple[Tensor, Tensor]] = {}
        for m, cols in MODALITIES.items():
            spread = {
                **{c: config.mag_offset_ut for c in cols if "_mag_" in c},
                **{c: config.temperature_offset_c for c in cols if c.endswith("temperature_c")},
                **{c: config.heart_rate_offset_bpm for c in cols if c == HEART_RATE},
            }
            index = torch.tensor([cols.index(c) for c in spread], device=self.device)
            scale = torch.tensor(list(spread.values()), device=self.device) / self.std[m][index]
            self.offsets[m] = index, scale
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @property
    def active(self) -> bool:
        c = self.config
        strengths = (
            c.rotation_deg,
            c.scale_std,
            c.time_warp,
            c.jitter_std,
            c.mirror_prob,
            c.mag_offset_ut,
            c.temperature_offset_c,
            c.heart_rate_offset_bpm,
        )
        return c.enabled and (any(s > 0 for s in strengths) or c.mirror_left_handed)

    def state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def _normal(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.device)

    def _uniform(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator, device=self.device)

    def __call__(
        self, x: dict[str, Tensor], present: dict[str, Tensor], subjects: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Augmented copies of `x` and `present` ([B, T, C] and [B, T] per modality) for
        windows of `subjects` [B]; the inputs are not modified."""
        if not self.active:
            return x, present
        c = self.config
        b = subjects.shape[0]
        flip = torch.zeros(b, dtype=torch.bool, device=self.device)
        if c.mirror_left_handed:
            flip = torch.isin(subjects.to(self.device), self.left_handed)
        if c.mirror_prob > 0:
            flip = flip ^ (self._uniform(b) < c.mirror_prob)
        out = dict(x)
        for m in self.imus:
            if m in x:
                out[m] = self._imu(m, x[m], present[m], flip if m in self.mirrored else None)
        present = dict(present)
        if c.time_warp > 0:
            out, present = self._warp(out, present)
        for m in out:
            index, scale = self.offsets[m]
            if (scale > 0).any():
                offset = torch.zeros(b, 1, out[m].shape[2], device=self.device)
                offset[:, :, index] = self._normal(b, 1, len(index)) * scale
                out[m] = out[m] + offset
            if c.jitter_std > 0:
                out[m] = out[m] + c.jitter_std * self._normal(*out[m].shape)
            out[m] = out[m] * present[m].unsqueeze(-1).to(out[m].dtype)
        return out, present

    def _imu(self, m: str, x: Tensor, present: Tensor, flip: Tensor | None) -> Tensor:
        """Mirror, rotate and scale one IMU's vector fields in physical units."""
        c = self.config
        b, t, _ = x.shape
        mean, std = self.mean[m][:9], self.std[m][:9]
        v = (x[:, :, :9] * std + mean).reshape(b, t, 3, 3)  # [B, T, field, axis]
        # One matrix per window and field: the rotation after the (optional) reflection.
        mats = rotation_matrices(self._normal(b, 3) * math.radians(c.rotation_deg))
        mats = mats.unsqueeze(1).expand(b, 3, 3, 3)  # [B, field, 3, 3]
        if flip is not None:
            signs = torch.where(flip[:, None, None], self.mirror_signs, 1.0)  # [B, field, axis]
            mats = mats * signs.unsqueeze(2)  # columns: reflect first, then rotate
        v = torch.einsum("bfij,btfj->btfi", mats, v)
        if c.scale_std > 0:
            scale = (self._normal(b) * c.scale_std).exp()[:, None, None]  # [B, 1, 1]
            weight = present.unsqueeze(-1).to(v.dtype)
            acc = v[:, :, 0]
            gravity = (acc * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp(1)
            acc = gravity + scale * (acc - gravity)
            v = torch.stack([acc, scale * v[:, :, 1], v[:, :, 2]], dim=2)
        return torch.cat([(v.reshape(b, t, 9) - mean) / std, x[:, :, 9:]], dim=-1)

    def _warp(
        self, x: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Resample every modality of a window along the same smooth monotone time warp."""
        first = next(iter(x.values()))
        b, t = first.shape[:2]
        a = (2 * self._uniform(b, 1) - 1) * self.config.time_warp
        u = torch.linspace(0, 1, t, device=self.device)[None, :]
        pos = (t - 1) * (u + a * torch.sin(math.pi * u) / math.pi)  # [B, T], ends fixed
        lo = pos.floor().long().clamp(0, t - 1)
        hi = (lo + 1).clamp(max=t - 1)
        frac = (pos - lo).unsqueeze(-1)
        out, mask = {}, {}
        for m, v in x.items():
            lo_v = v.gather(1, lo.unsqueeze(-1).expand(b, t, v.shape[2]))
            hi_v = v.gather(1, hi.unsqueeze(-1).expand(b, t, v.shape[2]))
            out[m] = lo_v + frac.to(v.dtype) * (hi_v - lo_v)
            # A resampled point is observed only if both samples it lies between are.
            mask[m] = present[m].gather(1, lo) & present[m].gather(1, hi)
        return out, mask
