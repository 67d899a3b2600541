"""Activity timelines: gap-aware windows over a recording, temporal smoothing, scoring, plot."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from ml_core.data.columns import ACTIVITY, MODEL_CHANNELS, SESSION, TIMESTAMP
from ml_core.lifecycle.timeline import build_timeline, cut_windows, plot_timeline, smooth, viterbi

CLASSES = [1, 4, 5]
SIGNAL = MODEL_CHANNELS.index("ankle_acc16_x")


def recording(rng: np.random.Generator, gap_at: int | None = None) -> pl.DataFrame:
    """Activities in long blocks; ankle acceleration x carries the activity (plus noise)."""
    blocks = [1, 4, 5, 4, 1, 5]
    labels = np.repeat(blocks, 1200)
    n = len(labels)
    t = np.arange(n) * 0.01
    if gap_at is not None:
        t[gap_at:] += 30.0  # the recording paused for 30 s
    values = rng.normal(size=(n, len(MODEL_CHANNELS))).astype(np.float32)
    values[:, SIGNAL] = labels + rng.normal(0, 1.5, size=n)
    return pl.DataFrame(
        {TIMESTAMP: t, ACTIVITY: labels, SESSION: ["protocol"] * n}
        | {c: values[:, i] for i, c in enumerate(MODEL_CHANNELS)}
    )


def predictor(windows: np.ndarray) -> np.ndarray:
    """Probabilities from the window's mean ankle acceleration: right most of the time."""
    level = windows[:, :6, SIGNAL].mean(axis=1)  # a short look: noisy on purpose
    logits = -((level[:, None] - np.array(CLASSES)[None, :]) ** 2)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_windows_never_cross_a_time_gap_or_session() -> None:
    frame = recording(np.random.default_rng(0), gap_at=1000)
    cut = cut_windows(frame, window=256, stride=128)
    # Rows before the gap: 1000 -> windows starting at 0..744 step 128 = 6; after: 6200 rows.
    before = len(range(0, 1000 - 256 + 1, 128))
    after = len(range(0, 6200 - 256 + 1, 128))
    assert len(cut) == before + after
    assert np.all(cut.end_s - cut.start_s < 256 * 0.01 + 1e-9)  # no window spans the pause
    assert sorted(set(cut.segment.tolist())) == [0, 1]
    two_sessions = frame.with_columns(
        pl.when(pl.int_range(pl.len()) < 3000)
        .then(pl.lit("protocol"))
        .otherwise(pl.lit("optional"))
        .alias(SESSION)
    )
    assert len(set(cut_windows(two_sessions, 256, 128).segment.tolist())) == 3


def test_viterbi_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=6)
    stay = 0.8
    trans = np.where(np.eye(3, dtype=bool), stay, (1 - stay) / 2)

    def score(path: tuple[int, ...]) -> float:
        s = np.log(probs[0, path[0]])
        for a, b, p in zip(path, path[1:], probs[1:], strict=False):
            s += np.log(trans[a, b]) + np.log(p[b])
        return float(s)

    best = max(itertools.product(range(3), repeat=6), key=score)
    assert viterbi(probs, stay).tolist() == list(best)


def test_smoothing_removes_isolated_errors_and_improves_macro_f1(tmp_path: Path) -> None:
    frame = recording(np.random.default_rng(2))
    timeline = build_timeline(frame, predictor, CLASSES, window=256, stride=64, method="hmm")
    assert timeline.labelled_windows == len(timeline.frame)
    assert timeline.macro_f1_raw is not None and timeline.macro_f1_smoothed is not None
    assert timeline.macro_f1_raw > 1 / 3 + 0.1  # the model has signal
    assert timeline.macro_f1_smoothed > timeline.macro_f1_raw + 0.05
    median = build_timeline(frame, predictor, CLASSES, window=256, stride=64, method="median")
    assert median.macro_f1_smoothed is not None
    assert median.macro_f1_smoothed > median.macro_f1_raw  # type: ignore[operator]
    none = build_timeline(frame, predictor, CLASSES, window=256, stride=64, method="none")
    assert (
        none.frame["smoothed_activity_id"].to_list()
        == none.frame["predicted_activity_id"].to_list()
    )
    target = plot_timeline(timeline, "subject 101", tmp_path / "timeline.png")
    image = imread(target)
    assert image.shape[1] >= 1000 and image.std() > 0.01


def test_smoothing_stays_inside_each_segment() -> None:
    # Two segments, each confidently one class: smoothing must not carry one into the other.
    probs = np.array([[0.9, 0.1]] * 5 + [[0.1, 0.9]] * 2)
    segment = np.array([0] * 5 + [1] * 2)
    assert smooth(probs, segment, "hmm", stay=0.999).tolist() == [0] * 5 + [1] * 2
    assert smooth(probs, np.zeros(7, dtype=int), "hmm", stay=0.999).tolist() == [0] * 7


@pytest.mark.parametrize("method", ["hmm", "median", "none"])
def test_transient_windows_are_shown_but_not_scored(method: str) -> None:
    frame = recording(np.random.default_rng(3)).with_columns(
        pl.when(pl.int_range(pl.len()) < 1200).then(0).otherwise(pl.col(ACTIVITY)).alias(ACTIVITY)
    )
    timeline = build_timeline(frame, predictor, CLASSES, 256, 128, method)  # type: ignore[arg-type]
    labels = timeline.frame["true_activity_id"].to_numpy()
    assert (labels == 0).any()
    assert timeline.labelled_windows == int((labels != 0).sum())


def _protocol_then_optional(rng: np.random.Generator) -> pl.DataFrame:
    """A gap inside the Protocol part, then an Optional part: raw_recording's order, which is
    not (session, time) order, so the windows come from a sorted copy."""
    frame = recording(rng, gap_at=2500)
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) < 5000)
        .then(pl.lit("protocol"))
        .otherwise(pl.lit("optional"))
        .alias(SESSION)
    )


def test_windows_hold_the_recordings_rows_and_majority_labels() -> None:
    frame = _protocol_then_optional(np.random.default_rng(4))
    cut = cut_windows(frame, window=256, stride=96)
    values = cut.values(0, len(cut))
    assert values.shape == (len(cut), 256, len(MODEL_CHANNELS))
    assert values.dtype == np.float32
    for i in range(len(cut)):  # each window found again by its session and start time
        rows = frame.filter(
            (pl.col(SESSION) == cut.session[i]) & (pl.col(TIMESTAMP) >= cut.start_s[i])
        ).head(256)
        assert rows[TIMESTAMP][-1] == cut.end_s[i]
        np.testing.assert_array_equal(values[i], rows.select(MODEL_CHANNELS).to_numpy())
        counts = rows[ACTIVITY].value_counts().sort(["count", ACTIVITY], descending=[True, False])
        assert cut.label[i] == counts[ACTIVITY][0]
    assert set(cut.session.tolist()) == {"protocol", "optional"}


def test_batched_timeline_equals_one_batch_and_never_exceeds_the_batch_size() -> None:
    frame = _protocol_then_optional(np.random.default_rng(5))
    batches: list[int] = []

    def counting_predictor(windows: np.ndarray) -> np.ndarray:
        batches.append(len(windows))
        return predictor(windows)

    whole = build_timeline(frame, counting_predictor, CLASSES, 256, 64, batch_size=10**6)
    n = len(whole.frame)
    assert batches == [n] and n > 100
    for batch_size in (1, 7, 64):
        batches.clear()
        batched = build_timeline(frame, counting_predictor, CLASSES, 256, 64, batch_size=batch_size)
        assert max(batches) == batch_size and sum(batches) == n
        assert batched.frame.equals(whole.frame)
        assert batched.macro_f1_smoothed == whole.macro_f1_smoothed


def test_a_recording_already_in_time_order_gives_the_same_timeline() -> None:
    frame = _protocol_then_optional(np.random.default_rng(6))
    ordered = frame.sort([SESSION, TIMESTAMP])
    a = build_timeline(frame, predictor, CLASSES, 256, 128, method="median")
    b = build_timeline(ordered, predictor, CLASSES, 256, 128, method="median")
    assert a.frame.equals(b.frame)
    assert a.frame["session"].to_list()[0] == "optional"  # sessions in name order
