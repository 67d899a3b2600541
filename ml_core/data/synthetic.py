"""Realistic synthetic PAMAP2 recordings in the official `.dat` format.

With no real data at hand the platform runs end to end on these files. They follow the real
layout (54 space-separated columns, `NaN` tokens, 0.01 s grid, the protocol order with
activity-0 breaks, per-subject durations and quirks) and imitate the signals: per sensor and
activity the gravity direction, movement energy, cadence and angular rate of the real excerpt,
heart rate that lags activity changes, dropped packets, a saturating ±6 g accelerometer, and
per-subject differences so that leave-one-subject-out is harder than a within-subject split.

Each sensor is a rotating frame: a posture (the gravity direction of the activity), a heading,
a periodic swing at the cadence plus a random wander. Gravity, the earth's magnetic field and
the swing's angular rate are read in that frame, and the linear acceleration of steps, jumps
or hand strokes is added on top.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
from scipy import signal

from ml_core.data.columns import (
    ACTIVITY,
    ALL_ACTIVITIES,
    HEART_RATE,
    IMUS,
    OPTIONAL_ACTIVITIES,
    OPTIONAL_SUBJECTS,
    SAMPLE_RATE_HZ,
    SESSIONS,
    SUBJECTS,
    TIMESTAMP,
    imu_columns,
)
from ml_core.io import atomic_path, write_json
from ml_core.paths import DataPaths

SCALES: tuple[str, ...] = ("tiny", "demo", "full")

_FS = float(SAMPLE_RATE_HZ)
_GRAVITY = 9.80665


@dataclass(frozen=True)
class _Scale:
    factor: float  # share of the real duration
    min_s: float  # floor per activity; real durations below it (106's rope jumping) stay real
    max_s: float  # ceiling per activity
    break_s: tuple[float, float]  # bounds of one activity-0 stretch


_SCALES: dict[str, _Scale] = {
    # tiny: every activity >= 25 s, so a 70/15/15 split with one-window gaps keeps windows.
    "tiny": _Scale(0.12, 25.0, 40.0, (3.0, 8.0)),
    "demo": _Scale(0.25, 0.0, math.inf, (0.0, math.inf)),
    "full": _Scale(1.0, 0.0, math.inf, (0.0, math.inf)),
}

# Seconds per activity for subjects 101..109, Protocol and Optional together (PAMAP2_FACTS.md).
_SECONDS: dict[int, tuple[float, ...]] = {
    1: (271.9, 234.3, 220.4, 230.5, 237.0, 233.4, 256.1, 241.6, 0),
    2: (234.8, 223.4, 287.6, 254.9, 268.6, 230.4, 122.8, 229.2, 0),
    3: (217.2, 255.8, 205.3, 247.1, 221.3, 243.6, 257.5, 251.6, 0),
    4: (222.5, 325.3, 290.4, 319.3, 320.3, 257.2, 337.2, 315.3, 0),
    5: (212.6, 92.4, 0, 0, 246.5, 228.2, 36.9, 165.3, 0),
    6: (235.7, 251.1, 0, 227.0, 245.8, 204.9, 226.8, 254.7, 0),
    7: (202.6, 297.4, 0, 275.3, 262.7, 266.9, 287.2, 288.9, 0),
    9: (836.5, 0, 0, 0, 0, 0, 0, 0, 0),
    10: (0, 0, 0, 0, 1108.8, 617.8, 0, 687.2, 685.5),
    11: (545.2, 0, 0, 0, 0, 0, 0, 0, 0),
    12: (158.9, 173.4, 103.9, 166.9, 142.8, 132.9, 176.4, 116.8, 0),
    13: (149.0, 152.1, 152.7, 142.8, 127.3, 112.7, 116.2, 96.5, 0),
    16: (229.4, 206.8, 203.2, 200.4, 244.4, 210.8, 215.5, 242.9, 0),
    17: (235.7, 288.8, 279.7, 249.9, 330.3, 377.4, 295.0, 329.9, 0),
    18: (271.1, 0, 0, 0, 0, 217.9, 0, 236.5, 273.3),
    19: (540.9, 0, 0, 0, 284.9, 287.1, 0, 416.9, 342.1),
    20: (0, 0, 0, 0, 0, 0, 0, 181.2, 287.9),
    24: (129.1, 132.6, 0, 0, 77.3, 2.6, 0, 88.1, 63.9),
}
# Activity-0 rows of the real Protocol files, and total rows of the real Optional files.
_PROTOCOL_TRANSIENT_ROWS = dict(
    zip(SUBJECTS, (126460, 183651, 78495, 98155, 102341, 111721, 80823, 145929, 2086), strict=True)
)
_OPTIONAL_ROWS = {101: 319_000, 105: 155_000, 106: 130_000, 108: 180_000, 109: 193_000}

# The order of the data collection protocol; stairs up and down alternate twice.
_PROTOCOL_ORDER = (1, 2, 3, 17, 16, 12, 13, 12, 13, 4, 7, 6, 5, 24)
_OPTIONAL_ORDER = tuple(OPTIONAL_ACTIVITIES)

_LEFT_HANDED = {108}
# Wrist and ankle sensors of a left-handed subject sit on the left: the lateral axis flips.
_MIRRORED_IMUS = ("hand", "ankle")
_LATERAL_AXIS = 1


@dataclass(frozen=True)
class _Motion:
    """One sensor during one activity."""

    up: tuple[float, float, float]  # unit vector of the mean acceleration in the sensor frame
    std: float  # std of the acceleration magnitude (m/s²)
    gyro: float  # mean norm of the angular rate (rad/s)


@dataclass(frozen=True)
class _Activity:
    hr: float  # mean heart rate (bpm)
    hand: _Motion
    chest: _Motion
    ankle: _Motion
    hz: float = 0.0  # cycle frequency: stride, pedal turn, jump, hand stroke; 0 = no rhythm
    kappa: float = 1.0  # impact sharpness of the cycle waveform
    rhythm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # periodic share per sensor
    opp: tuple[float, float, float] = (0.0, 0.0, 0.0)  # weight of the half-cycle impact
    burst: float = 0.2  # within-activity variability of the movement energy


_GAIT_RHYTHM = (0.6, 0.8, 0.85)
_HAND_RHYTHM = (0.5, 0.3, 0.0)

# Gravity direction, energy and angular rate per sensor from the real excerpt (one 5 s window
# per activity). Hand and ankle windows that came from left-handed 108 (walking, running,
# Nordic walking, ironing) are mirrored back to the right side. The excerpt's sitting window
# was fidgety: its energy is halved. Optional activities (no excerpt) follow the nearest
# protocol activity.
_ACTIVITIES: dict[int, _Activity] = {
    1: _Activity(
        76,
        _Motion((0.05, 0.59, 0.80), 0.1, 0.03),
        _Motion((0.11, 0.20, 0.97), 0.1, 0.04),
        _Motion((-0.06, -0.75, -0.66), 0.1, 0.03),
    ),
    2: _Activity(
        80,
        _Motion((-0.88, 0.46, 0.14), 1.0, 0.8),
        _Motion((-0.02, 0.79, -0.61), 0.7, 0.45),
        _Motion((0.97, -0.13, -0.21), 1.0, 0.3),
    ),
    3: _Activity(
        89,
        _Motion((-0.86, 0.51, 0.06), 0.2, 0.12),
        _Motion((0.09, 0.90, -0.43), 0.3, 0.11),
        _Motion((0.98, -0.16, -0.14), 0.1, 0.05),
    ),
    4: _Activity(
        113,
        _Motion((-0.98, 0.16, 0.09), 3.6, 3.29),
        _Motion((0.07, 1.00, -0.03), 3.5, 0.50),
        _Motion((0.94, 0.16, -0.29), 9.2, 3.28),
        hz=0.9,
        kappa=2.5,
        rhythm=_GAIT_RHYTHM,
        opp=(1.0, 1.0, 0.7),
    ),
    5: _Activity(
        157,
        _Motion((-0.53, 0.85, 0.05), 16.8, 5.44),
        _Motion((0.03, 0.98, -0.20), 11.0, 1.40),
        _Motion((0.89, 0.36, -0.27), 23.5, 5.38),
        hz=1.25,
        kappa=4.0,
        rhythm=_GAIT_RHYTHM,
        opp=(1.0, 1.0, 0.25),
    ),
    6: _Activity(
        125,
        _Motion((-0.50, 0.43, 0.75), 1.6, 0.38),
        _Motion((-0.05, 0.24, -0.97), 1.0, 0.45),
        _Motion((0.99, 0.16, -0.02), 2.6, 1.26),
        hz=0.65,
        kappa=0.8,
        rhythm=(0.2, 0.4, 0.85),
        opp=(1.0, 1.0, 0.0),
    ),
    7: _Activity(
        124,
        _Motion((-0.38, 0.87, 0.30), 6.4, 1.62),
        _Motion((0.04, 1.00, -0.04), 4.5, 0.53),
        _Motion((0.95, 0.14, -0.29), 9.1, 3.10),
        hz=0.9,
        kappa=2.5,
        rhythm=_GAIT_RHYTHM,
        opp=(1.0, 1.0, 0.7),
    ),
    9: _Activity(
        75,
        _Motion((-0.20, 0.30, 0.93), 0.3, 0.15),
        _Motion((0.05, 0.70, 0.70), 0.15, 0.08),
        _Motion((0.75, -0.10, -0.65), 0.15, 0.06),
    ),
    10: _Activity(
        80,
        _Motion((-0.10, 0.25, 0.96), 0.5, 0.3),
        _Motion((0.00, 0.92, -0.38), 0.2, 0.10),
        _Motion((0.95, -0.10, -0.28), 0.15, 0.08),
    ),
    11: _Activity(
        85,
        _Motion((-0.30, 0.55, 0.78), 0.9, 0.35),
        _Motion((0.02, 0.88, 0.47), 0.7, 0.15),
        _Motion((0.70, 0.05, -0.71), 0.8, 0.2),
    ),
    12: _Activity(
        129,
        _Motion((-0.85, 0.50, 0.18), 2.9, 1.41),
        _Motion((0.09, 0.98, -0.17), 2.6, 0.61),
        _Motion((0.91, 0.22, -0.35), 7.8, 1.97),
        hz=0.85,
        kappa=2.5,
        rhythm=_GAIT_RHYTHM,
        opp=(1.0, 1.0, 0.7),
    ),
    13: _Activity(
        129,
        _Motion((-0.81, 0.04, 0.58), 4.3, 1.84),
        _Motion((-0.05, 1.00, 0.01), 6.6, 1.07),
        _Motion((0.98, 0.06, -0.18), 8.7, 3.19),
        hz=1.0,
        kappa=3.0,
        rhythm=_GAIT_RHYTHM,
        opp=(1.0, 1.0, 0.7),
    ),
    16: _Activity(
        104,
        _Motion((-0.97, 0.20, 0.12), 1.9, 0.83),
        _Motion((-0.20, 0.72, -0.66), 0.6, 0.58),
        _Motion((0.95, -0.07, -0.30), 0.4, 0.44),
        hz=0.5,
        rhythm=_HAND_RHYTHM,
    ),
    17: _Activity(
        90,
        _Motion((-0.51, 0.34, 0.79), 1.2, 1.14),
        _Motion((0.08, 0.97, -0.23), 0.3, 0.27),
        _Motion((0.94, -0.01, -0.33), 0.1, 0.15),
        hz=0.7,
        rhythm=_HAND_RHYTHM,
    ),
    18: _Activity(
        90,
        _Motion((-0.55, 0.30, 0.78), 1.8, 1.3),
        _Motion((0.05, 0.93, -0.36), 0.6, 0.35),
        _Motion((0.97, -0.12, -0.20), 0.3, 0.15),
        hz=0.4,
        rhythm=(0.3, 0.2, 0.0),
        burst=0.4,
    ),
    19: _Activity(
        100,
        _Motion((-0.80, 0.35, 0.48), 3.0, 1.6),
        _Motion((-0.10, 0.85, -0.52), 1.5, 0.6),
        _Motion((0.95, -0.05, -0.30), 2.0, 0.9),
        hz=0.6,
        rhythm=_HAND_RHYTHM,
        burst=0.4,
    ),
    20: _Activity(
        150,
        _Motion((-0.70, 0.65, 0.20), 12.0, 4.0),
        _Motion((0.05, 0.97, -0.25), 8.0, 1.2),
        _Motion((0.90, 0.30, -0.30), 18.0, 4.5),
        hz=1.15,
        kappa=3.0,
        rhythm=_GAIT_RHYTHM,
        opp=(1.0, 1.0, 0.4),
        burst=0.6,
    ),
    24: _Activity(
        162,
        _Motion((-0.46, 0.87, -0.18), 10.3, 4.84),
        _Motion((0.06, 0.99, -0.13), 15.0, 0.99),
        _Motion((0.88, 0.29, -0.38), 11.6, 2.07),
        hz=2.05,
        kappa=4.0,
        rhythm=(0.85, 0.85, 0.85),
    ),
}
_LOCOMOTION = {4, 5, 7, 12, 13, 20}  # activities that move through the room: the heading turns
_REST_HR = 76.0  # lying: the level the other activities' heart rates are measured from

# Per sensor: axis of the periodic swing (arm and shank swing about z, the trunk twists about
# y) and the phase lag of the hand behind the steps.
_SWING_AXIS = {
    "hand": np.array([0.45, 0.35, 0.82]),
    "chest": np.array([0.45, 0.70, 0.55]),
    "ankle": np.array([0.40, 0.30, 0.87]),
}
_SWING_AXIS = {k: v / np.linalg.norm(v) for k, v in _SWING_AXIS.items()}
_PHASE_LAG = {"hand": np.pi / 2, "chest": 0.0, "ankle": 0.0}

_DROP_RATE = {"hand": 0.0046, "chest": 0.0012, "ankle": 0.0041}
_TEMPERATURE_RANGE = {"hand": (31.0, 34.0), "chest": (33.0, 36.0), "ankle": (30.0, 34.0)}
# Skin temperature response to exertion (°C at full effort): limbs cool in the airflow.
_TEMPERATURE_EXERTION = {"hand": -1.2, "chest": 0.8, "ankle": -0.8}
# Earth field at about 50° N: 48 µT at 66° inclination (world frame x north, z up).
_FIELD_H = 48.0 * math.cos(math.radians(66))
_FIELD_V = -48.0 * math.sin(math.radians(66))
_ACC16_LIMIT = 16 * _GRAVITY

_DECIMALS = {"temperature_c": 4, "acc16": 5, "acc6": 5, "gyro": 6, "mag": 4}


@dataclass(frozen=True)
class _Segment:
    label: int  # activity id written to the file
    motion: int  # activity whose movement the samples imitate
    rows: int
    energy: float = 1.0  # movement scale: pieces of a transient move less


@dataclass(frozen=True)
class _Sensor:
    """One subject's IMU: mounting and calibration."""

    mount: np.ndarray  # rotation matrix of the strap's small misalignment
    posture: dict[int, np.ndarray]  # per activity: the subject's own gravity direction
    style: dict[int, np.ndarray]  # per activity: rotation of the swing axis, own way to move
    gain: float
    hard_iron: np.ndarray
    acc16_offset: np.ndarray
    acc6_offset: np.ndarray
    acc6_gain: np.ndarray
    acc6_limit: float
    gyro_bias: np.ndarray
    temperature: float


@dataclass(frozen=True)
class _Subject:
    sensors: dict[str, _Sensor]
    effort: dict[int, float]  # per activity movement energy
    cadence: dict[int, float]  # per activity cadence factor
    hr_rest: float
    hr_gain: float
    hr_tau_s: float
    left_handed: bool


def _rotation_matrix(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle == 0.0:
        return np.eye(3)
    k = rotvec / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _rotate(v: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    """Rotate rows of `v` by the rotation vectors `rotvec` (Rodrigues), both (n, 3)."""
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    k = rotvec / np.where(angle > 0, angle, 1.0)
    cos, sin = np.cos(angle), np.sin(angle)
    dot = np.sum(k * v, axis=-1, keepdims=True)
    return v * cos + np.cross(k, v) * sin + k * dot * (1 - cos)


def _subject(seed: int, subject: int) -> _Subject:
    """The subject's traits, shared by both sessions and independent of other subjects."""
    rng = np.random.default_rng([seed, subject])
    sensors = {}
    for imu in IMUS:
        posture, style = {}, {}
        for act in ALL_ACTIVITIES:
            # Lying and reclining postures vary most between people.
            spread = 0.4 if act in (1, 9) else 0.22
            up = _rotate(np.array(getattr(_ACTIVITIES[act], imu).up), rng.normal(0, spread, 3))
            posture[act] = up / np.linalg.norm(up)
            style[act] = _rotation_matrix(rng.normal(0, 0.35, 3))
        sensors[imu] = _Sensor(
            mount=_rotation_matrix(rng.normal(0, 0.15, 3)),
            posture=posture,
            style=style,
            gain=float(rng.lognormal(0, 0.25)),
            hard_iron=rng.normal(0, 10, 3),
            acc16_offset=rng.normal(0, 0.1, 3),
            acc6_offset=rng.normal(0, 0.4, 3),
            acc6_gain=rng.normal(1, 0.02, 3),
            acc6_limit=float(rng.uniform(61.0, 62.0)),
            gyro_bias=rng.normal(0, 0.005, 3),
            temperature=float(np.mean(_TEMPERATURE_RANGE[imu]) + rng.normal(0, 0.5)),
        )
    cadence = float(np.clip(rng.normal(1, 0.07), 0.85, 1.15))
    return _Subject(
        sensors=sensors,
        effort={a: float(rng.lognormal(0, 0.3)) for a in ALL_ACTIVITIES},
        cadence={a: cadence * float(rng.normal(1, 0.06)) for a in ALL_ACTIVITIES},
        hr_rest=_REST_HR + float(rng.normal(0, 7)),
        hr_gain=float(rng.lognormal(0, 0.12)),
        hr_tau_s=float(rng.uniform(20, 45)),
        left_handed=subject in _LEFT_HANDED,
    )


def _session_activities(subject: int, session: str) -> list[tuple[int, float]]:
    """(activity, real seconds) in recording order; repeated activities share the time."""
    order = _PROTOCOL_ORDER if session == "protocol" else _OPTIONAL_ORDER
    col = SUBJECTS.index(subject)
    return [(act, _SECONDS[act][col] / order.count(act)) for act in order if _SECONDS[act][col] > 0]


def _transient_pieces(
    prev: int | None, nxt: int | None, rows: int, rng: np.random.Generator
) -> list[_Segment]:
    """An activity-0 stretch: the end of the last activity, standing and strolling, the start
    of the next one, so that breaks look like the mixes and transitions of the real data."""
    if rows < 200:
        return [_Segment(0, 3, rows)]
    pieces: list[tuple[int, float, float]] = []  # (motion, energy, share)
    if prev is not None and rng.random() < 0.5:
        pieces.append((prev, 0.4, rng.uniform(0.1, 0.25)))
    for i in range(int(rng.integers(1, 4))):
        pieces.append((3, 1.0, rng.uniform(0.2, 0.5)) if i % 2 == 0 else (4, 0.5, 0.3))
    if nxt is not None and rng.random() < 0.5:
        pieces.append((nxt, 0.4, rng.uniform(0.1, 0.25)))
    shares = np.array([p[2] for p in pieces])
    bounds = np.round(np.cumsum(shares) / shares.sum() * rows).astype(int)
    sizes = np.diff(bounds, prepend=0)
    return [_Segment(0, m, int(s), e) for (m, e, _), s in zip(pieces, sizes, strict=True) if s]


def _plan(subject: int, session: str, scale: _Scale, rng: np.random.Generator) -> list[_Segment]:
    """The recording as segments: activity-0 stretches around every activity."""
    acts = _session_activities(subject, session)
    totals: dict[int, float] = {}
    for act, seconds in acts:
        totals[act] = totals.get(act, 0.0) + seconds
    per_activity = {
        act: min(max(real * scale.factor, min(scale.min_s, real)), scale.max_s)
        for act, real in totals.items()
    }
    labeled_rows = [round(per_activity[act] * seconds / totals[act] * _FS) for act, seconds in acts]
    if session == "protocol":
        transient_rows = _PROTOCOL_TRANSIENT_ROWS[subject]
    else:
        transient_rows = _OPTIONAL_ROWS[subject] - round(sum(totals.values()) * _FS)
    weights = rng.uniform(0.6, 1.4, len(acts) + 1)
    break_s = np.clip(transient_rows / _FS * scale.factor * weights / weights.sum(), *scale.break_s)
    segments: list[_Segment] = []
    for i, seconds in enumerate(break_s):
        prev = acts[i - 1][0] if i > 0 else None
        nxt = acts[i][0] if i < len(acts) else None
        segments += _transient_pieces(prev, nxt, round(seconds * _FS), rng)
        if nxt is not None:
            segments.append(_Segment(nxt, nxt, labeled_rows[i]))
    return [s for s in segments if s.rows > 0]


@cache
def _lowpass(fc: float) -> tuple[int, np.ndarray, float]:
    """Decimation step, Butterworth low-pass at `fc` Hz on that grid, and the std of its
    output for unit white noise. Slow noise is drawn on a grid ~20x its cutoff: cheap."""
    step = max(1, int(_FS // (20 * fc)))
    sos = signal.butter(2, fc, fs=_FS / step, output="sos")
    impulse = np.zeros(int(20 * _FS / step / fc))
    impulse[0] = 1.0
    return step, sos, float(np.sqrt(np.sum(signal.sosfilt(sos, impulse) ** 2)))


def _lowpass_noise(rng: np.random.Generator, n: int, fc: float, dims: int = 3) -> np.ndarray:
    """Stationary band-limited Gaussian noise with unit std per column, (n, dims)."""
    step, sos, std = _lowpass(fc)
    burn = int(2 * _FS / step / fc)  # let the filter reach its stationary state
    coarse = n // step + 2
    noise = signal.sosfilt(sos, rng.standard_normal((coarse + burn, dims)), axis=0)[burn:] / std
    if step == 1:
        return noise[:n]
    at = np.arange(n) / step
    return np.stack([np.interp(at, np.arange(coarse), col) for col in noise.T], axis=1)


@cache
def _waveform(kappa: float, opp: float) -> np.ndarray:
    """One cycle of the impact pattern (zero mean, unit std) on a 1024-point phase grid."""
    phi = np.linspace(0, 2 * np.pi, 1024, endpoint=False)
    wave = np.exp(kappa * (np.cos(phi) - 1)) + opp * np.exp(kappa * (np.cos(phi + np.pi) - 1))
    return (wave - wave.mean()) / wave.std()


def _ramp(n: int, width: int) -> np.ndarray:
    """1 inside a segment, easing in and out over `width` samples at its ends."""
    i = np.arange(n)
    return np.clip(np.minimum(i + 1, n - i) / width, 0, 1)


def _box_smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along axis 0 (edges repeat): posture changes take ~1 s."""
    pad = width // 2
    padded = np.concatenate([np.repeat(x[:1], pad, 0), x, np.repeat(x[-1:], width - pad, 0)])
    c = np.cumsum(padded, axis=0)
    return (c[width:] - c[:-width])[: len(x)] / width


def _lag(x: np.ndarray, tau_s: float) -> np.ndarray:
    """First-order lag (time constant `tau_s`) starting at the first value."""
    a = math.exp(-1 / (tau_s * _FS))
    out, _ = signal.lfilter([1 - a], [1, -a], x, zi=[a * x[0]])
    return out


@dataclass
class _Motions:
    """Per-row movement of one sensor in its own frame, filled segment by segment."""

    up: np.ndarray
    theta: np.ndarray
    omega: np.ndarray
    lin: np.ndarray
    yaw_rate: np.ndarray
    yaw_offset: np.ndarray
    field_offset: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Motions:
        z3 = np.zeros((n, 3))
        return cls(z3, z3.copy(), z3.copy(), z3.copy(), np.zeros(n), np.zeros(n), z3.copy())


def _move(
    segments: list[_Segment],
    traits: _Subject,
    rng: np.random.Generator,
    n: int,
    gains: dict[int, np.ndarray] | None = None,
) -> dict[str, _Motions]:
    """Posture, swing, wander and linear acceleration of every sensor, segment by segment.

    `gains` (per activity: acceleration and angular-rate multipliers per sensor) default to
    the calibrated ones.
    """
    motions = {imu: _Motions.empty(n) for imu in IMUS}
    yaw = 0.0
    start = 0
    for seg in segments:
        m, stop = seg.rows, start + seg.rows
        act = _ACTIVITIES[seg.motion]
        yaw += rng.uniform(-np.pi, np.pi)  # the subject faces a new direction
        env = 1 + act.burst * _lowpass_noise(rng, m, 0.05, 1)[:, 0]
        env = np.clip(env, 0.3, None) * _ramp(m, 30) * seg.energy * traits.effort[seg.motion]
        hz = act.hz * traits.cadence[seg.motion] * (0.85 if seg.energy < 1 else 1.0)
        freq = hz * (1 + 0.03 * _lowpass_noise(rng, m, 0.05, 1)[:, 0])
        phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(freq) / _FS
        turning = 0.15 if seg.motion in _LOCOMOTION else 0.02
        yaw_rate = turning * _lowpass_noise(rng, m, 0.1, 1)[:, 0]
        field_offset = rng.normal(0, 4, 3)  # indoor field distortion differs by place
        acc_gain, gyro_gain = _gains(seg.motion) if gains is None else gains[seg.motion]
        for i, imu in enumerate(IMUS):
            mo, sensor, out = getattr(act, imu), traits.sensors[imu], motions[imu]
            rhythm = act.rhythm[i] if hz > 0 else 0.0
            up = sensor.posture[seg.motion]
            axis = sensor.style[seg.motion] @ _SWING_AXIS[imu]
            # Periodic swing: mean |ω| of A·sin(2πft) is 4Af.
            swing = rhythm * mo.gyro * gyro_gain[i] / (4 * hz) if hz > 0 else 0.0
            cyc = phase + _PHASE_LAG[imu]
            theta = np.outer(swing * env * np.sin(cyc), axis)
            omega = np.outer(swing * env * np.cos(cyc) * 2 * np.pi * freq, axis)
            # Random wander: angular rate as band-limited noise, leaky-integrated to an angle.
            wander = (1 - rhythm) * mo.gyro * gyro_gain[i] / 1.6 * _lowpass_noise(rng, m, 1.5)
            wander *= env[:, None]
            leak = 1 - 1 / (1.5 * _FS)
            theta += signal.lfilter([1 / _FS], [1, -leak], wander, axis=0)
            theta += 0.08 * _lowpass_noise(rng, m, 0.02)  # slow shifts of posture
            omega += wander
            # Linear acceleration: impacts mostly along gravity, partly along the swing path.
            tangent = np.cross(axis, up)
            direction = 0.8 * up + 0.6 * tangent / np.linalg.norm(tangent)
            direction /= np.linalg.norm(direction)
            amp = mo.std * acc_gain[i] * sensor.gain / math.sqrt(0.64 * rhythm + (1 - rhythm))
            wave = _waveform(act.kappa, act.opp[i])[
                ((cyc / (2 * np.pi)) * 1024).astype(np.int64) % 1024
            ]
            lin = math.sqrt(rhythm) * np.outer(wave, direction)
            lin += math.sqrt(1 - rhythm) * _lowpass_noise(rng, m, 4.0)
            out.up[start:stop] = up
            out.theta[start:stop] = theta
            out.omega[start:stop] = omega
            out.lin[start:stop] = amp * env[:, None] * lin
            out.yaw_rate[start:stop] = yaw_rate
            out.yaw_offset[start:stop] = yaw
            out.field_offset[start:stop] = field_offset
        start = stop
    return motions


@cache
def _neutral_subject() -> _Subject:
    """A subject exactly on the activity templates: what calibration measures."""
    sensor = {
        imu: _Sensor(
            mount=np.eye(3),
            posture={a: np.array(getattr(_ACTIVITIES[a], imu).up) for a in ALL_ACTIVITIES},
            style=dict.fromkeys(ALL_ACTIVITIES, np.eye(3)),
            gain=1.0,
            hard_iron=np.zeros(3),
            acc16_offset=np.zeros(3),
            acc6_offset=np.zeros(3),
            acc6_gain=np.ones(3),
            acc6_limit=61.5,
            gyro_bias=np.zeros(3),
            temperature=float(np.mean(_TEMPERATURE_RANGE[imu])),
        )
        for imu in IMUS
    }
    ones = dict.fromkeys(ALL_ACTIVITIES, 1.0)
    return _Subject(sensor, ones, ones, _REST_HR, 1.0, 30.0, left_handed=False)


@cache
def _gains(activity: int) -> np.ndarray:
    """Acceleration and angular-rate multipliers per sensor, shape (2, 3), that make the
    template subject hit the activity's magnitude std and mean angular rate over 5 s windows.

    Large accelerations fold through gravity and the swing turns gravity away from the
    impact direction, so plain amplitudes fall short; a few fixed-point steps on a 100 s
    simulation correct that, whatever the template numbers are.
    """
    rows, window = 10_000, 500
    segment = [_Segment(activity, activity, rows)]
    gains = np.ones((2, 3))
    for _ in range(3):
        rng = np.random.default_rng(activity)
        motions = _move(segment, _neutral_subject(), rng, rows, {activity: gains})
        for i, imu in enumerate(IMUS):
            mo, target = motions[imu], getattr(_ACTIVITIES[activity], imu)
            acc = _GRAVITY * _rotate(mo.up, mo.theta) + mo.lin
            magnitude = np.linalg.norm(acc, axis=1).reshape(-1, window)
            gains[0, i] *= target.std / magnitude.std(axis=1).mean()
            gains[1, i] *= target.gyro / np.linalg.norm(mo.omega, axis=1).mean()
    return gains


def _drops(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Dropped wireless packets: mostly single samples, now and then a short burst."""
    starts = np.flatnonzero(rng.random(n) < rate / 1.6)  # mean burst length is 1.6
    lengths = np.where(rng.random(len(starts)) < 0.85, 1, rng.integers(2, 9, len(starts)))
    idx = np.repeat(starts, lengths) + (
        np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    mask = np.zeros(n, dtype=bool)
    mask[idx[idx < n]] = True
    return mask


def _imu_block(
    imu: str,
    mo: _Motions,
    sensor: _Sensor,
    mirrored: bool,
    exertion: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The 17 file columns of one IMU from its movement."""
    n = len(mo.up)
    up = _box_smooth(mo.up, int(_FS))
    up /= np.linalg.norm(up, axis=1, keepdims=True)
    yaw = _box_smooth(mo.yaw_offset, int(_FS)) + np.cumsum(mo.yaw_rate) / _FS
    # World -> sensor: turn by the heading, tilt world z onto the posture, then swing.
    field = np.stack([_FIELD_H * np.cos(yaw), _FIELD_H * np.sin(yaw), np.full(n, _FIELD_V)], 1)
    horizontal = np.hypot(up[:, 0], up[:, 1])
    tilt_axis = (
        np.stack([-up[:, 1], up[:, 0], np.zeros(n)], 1)
        / np.where(horizontal > 1e-9, horizontal, 1.0)[:, None]
    )
    tilt_axis[horizontal <= 1e-9] = (1.0, 0.0, 0.0)
    tilt = tilt_axis * np.arccos(np.clip(up[:, 2], -1, 1))[:, None]
    gravity = _rotate(up, mo.theta)
    mag = _rotate(_rotate(field, tilt), mo.theta)
    acc = _GRAVITY * gravity + mo.lin
    gyro = mo.omega + mo.yaw_rate[:, None] * gravity
    acc, mag, gyro = (x @ sensor.mount.T for x in (acc, mag, gyro))
    if mirrored:
        # A reflection: vectors flip the lateral axis, the angular rate the other two.
        acc[:, _LATERAL_AXIS] *= -1
        mag[:, _LATERAL_AXIS] *= -1
        gyro *= -1
        gyro[:, _LATERAL_AXIS] *= -1
    mag += sensor.hard_iron + _box_smooth(mo.field_offset, int(_FS))
    mag += rng.normal(0, 0.3, (n, 3))
    acc16 = np.clip(
        acc + sensor.acc16_offset + rng.normal(0, 0.04, (n, 3)), -_ACC16_LIMIT, _ACC16_LIMIT
    )
    acc6 = acc * sensor.acc6_gain + sensor.acc6_offset + rng.normal(0, 0.02, (n, 3))
    acc6 = np.clip(acc6, -sensor.acc6_limit, sensor.acc6_limit)
    gyro = gyro + sensor.gyro_bias + rng.normal(0, 0.01, (n, 3))
    # Skin temperature: drifts slowly, follows exertion with a ~10 min lag, 1/16 °C steps.
    t = np.arange(n) / _FS
    lo, hi = _TEMPERATURE_RANGE[imu]
    temperature = (
        sensor.temperature
        + _TEMPERATURE_EXERTION[imu] * _lag(exertion, 600.0)
        + 0.4 * np.sin(2 * np.pi * t / rng.uniform(900, 2400) + rng.uniform(0, 2 * np.pi))
        + rng.normal(0, 0.5) * t / 3600
    )
    temperature = np.round(np.clip(temperature, lo, hi) * 16) / 16
    orientation = np.zeros((n, 4))
    orientation[:, 0] = 1.0  # documented as invalid; the files carry a constant quaternion
    fields = np.column_stack([temperature, acc16, acc6, gyro, mag, orientation])
    fields[_drops(rng, n, _DROP_RATE[imu])] = np.nan
    return dict(zip(imu_columns(imu), fields.T, strict=True))


def _heart_rate(
    segments: list[_Segment], traits: _Subject, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Heart rate at ~9 Hz (NaN between readings) and the exertion level (0 rest, 1 max)."""
    levels = np.array(
        [
            traits.hr_rest + traits.hr_gain * (_ACTIVITIES[s.motion].hr - _REST_HR) * s.energy**0.5
            for s in segments
        ]
    )
    rows = np.array([s.rows for s in segments])
    target = np.repeat(levels, rows)
    hr = _lag(target, traits.hr_tau_s) + 3 * _lowpass_noise(rng, n, 0.02, 1)[:, 0]
    # Aborted recordings were spliced in activity-0 stretches: the heart rate jumps there.
    starts = np.cumsum(rows) - rows
    for seg, start in zip(segments, starts, strict=True):
        if seg.label == 0 and seg.rows > 1 and rng.random() < 0.1:
            at = start + int(rng.integers(seg.rows))
            decay = np.exp(-np.arange(n - at) / (traits.hr_tau_s * _FS))
            hr[at:] += rng.normal(0, 15) * decay
    hr = np.clip(np.round(hr + rng.normal(0, 1, n)), 57, 202)
    readings = np.cumsum(rng.integers(10, 13, n // 10 + 2))  # one reading per ~11 rows
    out = np.full(n, np.nan)
    keep = readings[readings < n]
    out[keep] = hr[keep]
    exertion = np.clip((target - traits.hr_rest) / (162 - _REST_HR), 0, 1)
    return out, exertion


def _session_seed(seed: int, subject: int, session: str) -> np.random.Generator:
    return np.random.default_rng([seed, subject, SESSIONS.index(session) + 1])


def _check(subject: int, session: str, scale: str, seed: int) -> None:
    if scale not in _SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject}; PAMAP2 subjects are {SUBJECTS}")
    if session not in SESSIONS:
        raise ValueError(f"unknown session {session!r}; choose one of {SESSIONS}")
    if session == "optional" and subject not in OPTIONAL_SUBJECTS:
        raise ValueError(f"subject {subject} has no Optional recording")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def generate_recording(
    subject: int, session: str = "protocol", scale: str = "demo", seed: int = 0
) -> pl.DataFrame:
    """One subject's session as a frame with the 54 `.dat` columns (NaN where missing)."""
    _check(subject, session, scale, seed)
    traits = _subject(seed, subject)
    rng = _session_seed(seed, subject, session)
    segments = _plan(subject, session, _SCALES[scale], rng)
    n = sum(s.rows for s in segments)
    start = int(rng.integers(300, 1000))  # the real files start a few seconds in
    columns: dict[str, np.ndarray] = {
        TIMESTAMP: (start + np.arange(n)) / _FS,
        ACTIVITY: np.repeat([s.label for s in segments], [s.rows for s in segments]),
    }
    columns[HEART_RATE], exertion = _heart_rate(segments, traits, rng, n)
    motions = _move(segments, traits, rng, n)
    for imu in IMUS:
        mirrored = traits.left_handed and imu in _MIRRORED_IMUS
        block = _imu_block(imu, motions[imu], traits.sensors[imu], mirrored, exertion, rng)
        for name, values in block.items():
            decimals = next((d for key, d in _DECIMALS.items() if key in name), None)
            columns[name] = values if decimals is None else np.round(values, decimals)
    frame = pl.DataFrame(columns)
    return frame.with_columns(pl.col(ACTIVITY).cast(pl.Int16))


def _dat_path(raw_dir: Path, session: str, subject: int) -> Path:
    """Where the file goes under `raw_dir`, with the layout that `DataPaths` reads."""
    layout = DataPaths(Path())
    return raw_dir / layout.dat_file(session, subject).relative_to(layout.raw)


class RecordingsExistError(FileExistsError):
    """The data set folder holds recordings this generator did not write."""


def write_dataset(
    raw_dir: Path,
    scale: str = "demo",
    seed: int = 0,
    subjects: Sequence[int] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write `PAMAP2_Dataset/{Protocol,Optional}/subject1NN.dat` under `raw_dir`.

    Returns a summary: per file (relative to `raw_dir`) its rows and bytes, total rows, seconds.
    The same seed gives byte-identical files; a subject's data does not depend on the others.
    Recordings that this generator did not write (no synthetic marker beside them: a download or
    a user's own files) are never overwritten unless `overwrite` says so; the marker is written
    before the first file, so a generation that was cut short can be repeated.
    """
    begin = time.perf_counter()
    raw_dir = Path(raw_dir)
    chosen = list(SUBJECTS if subjects is None else subjects)
    for subject in chosen:  # refuse bad arguments before writing anything
        _check(subject, "protocol", scale, seed)
    layout = DataPaths(Path())
    marker = raw_dir / layout.synthetic_marker.relative_to(layout.raw)
    existing = sorted(marker.parent.glob("*/*.dat")) if marker.parent.is_dir() else []
    if existing and not marker.exists() and not overwrite:
        raise RecordingsExistError(
            f"{marker.parent} holds {len(existing)} recordings that were not generated here "
            f"(no {marker.name}), e.g. {existing[0].relative_to(marker.parent)}: refusing to "
            "overwrite them. Move them away, write elsewhere, or overwrite explicitly "
            "(`pamap synth --overwrite`)."
        )
    # Reports label results on this data as synthetic; a real download replaces the folder.
    write_json({"generator": "ml_core.data.synthetic", "scale": scale, "seed": seed}, marker)
    files: dict[str, dict[str, int]] = {}
    for subject in chosen:
        sessions = ["protocol"] + (["optional"] if subject in OPTIONAL_SUBJECTS else [])
        for session in sessions:
            frame = generate_recording(subject, session, scale, seed)
            target = _dat_path(raw_dir, session, subject)
            with atomic_path(target) as tmp:
                frame.write_csv(
                    tmp,
                    separator=" ",
                    include_header=False,
                    null_value="NaN",
                    float_scientific=False,
                )
            files[target.relative_to(raw_dir).as_posix()] = {
                "rows": frame.height,
                "bytes": target.stat().st_size,
            }
    return {
        "scale": scale,
        "seed": seed,
        "files": files,
        "rows": sum(f["rows"] for f in files.values()),
        "seconds": round(time.perf_counter() - begin, 3),
    }
