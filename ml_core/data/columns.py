"""The one place that names PAMAP2 columns, activities, subjects and model channels.

Every other module imports names from here instead of spelling column strings itself.
"""

from __future__ import annotations

IMUS: tuple[str, ...] = ("hand", "chest", "ankle")
AXES: tuple[str, ...] = ("x", "y", "z")

TIMESTAMP = "timestamp_s"
ACTIVITY = "activity_id"
HEART_RATE = "heart_rate_bpm"
SUBJECT = "subject_id"
SESSION = "session"

SESSIONS: tuple[str, ...] = ("protocol", "optional")


def imu_columns(imu: str) -> list[str]:
    """The 17 columns of one IMU, in file order."""
    return [
        f"{imu}_temperature_c",
        *(f"{imu}_acc16_{a}" for a in AXES),
        *(f"{imu}_acc6_{a}" for a in AXES),
        *(f"{imu}_gyro_{a}" for a in AXES),
        *(f"{imu}_mag_{a}" for a in AXES),
        *(f"{imu}_orientation_{c}" for c in ("w", "x", "y", "z")),
    ]


# The 54 columns of a `.dat` file, in file order.
DAT_COLUMNS: list[str] = [TIMESTAMP, ACTIVITY, HEART_RATE] + [
    c for imu in IMUS for c in imu_columns(imu)
]
# The 56-field table: the 54 file columns plus where the rows came from.
TABLE_COLUMNS: list[str] = [*DAT_COLUMNS, SUBJECT, SESSION]

# Model inputs: per IMU the ±16 g accelerometer, gyroscope, magnetometer and temperature
# (the ±6 g accelerometer saturates and orientation is documented as invalid).
MODALITIES: dict[str, list[str]] = {
    **{
        f"imu_{imu}": [
            *(f"{imu}_acc16_{a}" for a in AXES),
            *(f"{imu}_gyro_{a}" for a in AXES),
            *(f"{imu}_mag_{a}" for a in AXES),
            f"{imu}_temperature_c",
        ]
        for imu in IMUS
    },
    "heart_rate": [HEART_RATE],
}
# The channel order of tensor shards and feature statistics.
MODEL_CHANNELS: list[str] = [c for cols in MODALITIES.values() for c in cols]

ACTIVITY_NAMES: dict[int, str] = {
    0: "transient",
    1: "lying",
    2: "sitting",
    3: "standing",
    4: "walking",
    5: "running",
    6: "cycling",
    7: "Nordic walking",
    9: "watching TV",
    10: "computer work",
    11: "car driving",
    12: "ascending stairs",
    13: "descending stairs",
    16: "vacuum cleaning",
    17: "ironing",
    18: "folding laundry",
    19: "house cleaning",
    20: "playing soccer",
    24: "rope jumping",
}
PROTOCOL_ACTIVITIES: list[int] = [1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24]
OPTIONAL_ACTIVITIES: list[int] = [9, 10, 11, 18, 19, 20]
ALL_ACTIVITIES: list[int] = sorted(PROTOCOL_ACTIVITIES + OPTIONAL_ACTIVITIES)
# protocol11: the 12 protocol activities without rope jumping (24), the class set of the
# published holdout-106 results (few subjects did rope jumping; 109 did nothing else).
CLASS_SETS: dict[str, list[int]] = {
    "protocol12": PROTOCOL_ACTIVITIES,
    "protocol11": [a for a in PROTOCOL_ACTIVITIES if a != 24],
    "all18": ALL_ACTIVITIES,
}

SUBJECTS: list[int] = list(range(101, 110))
# 108 is left-handed: the wrist and ankle IMUs sit on the left side of the body.
LEFT_HANDED_SUBJECTS: tuple[int, ...] = (108,)
MIRRORED_IMUS: tuple[str, ...] = ("hand", "ankle")  # on the left for a left-handed subject
OPTIONAL_SUBJECTS: list[int] = [101, 105, 106, 108, 109]

SAMPLE_RATE_HZ = 100
