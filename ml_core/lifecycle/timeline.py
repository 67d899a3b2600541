"""Activity timelines: a model over a whole recording, window by window, then smoothed in time.

A recording (the 56-field table of `ml_core.data.ingest`, raw rows at 100 Hz) is cut into sliding
windows that never cross a time gap or a session; a model that takes raw windows (the MLflow
serving model, which cleans and normalises itself) gives class probabilities per window; a
temporal smoother turns them into a timeline:
- `hmm`: Viterbi decoding with a sticky transition matrix (stay with probability `stay`,
  otherwise move to any other class uniformly) over the model's posteriors as emissions;
- `median`: a centred median filter of each class's probability over `median_windows`
  consecutive windows, then argmax;
- `none`: the raw argmax.
Smoothing runs inside each contiguous segment. Labels, where the recording has them, are the
majority activity of the window's rows; activity 0 (transient) windows are shown but not scored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.ndimage import median_filter

from ml_core.data.columns import (
    ACTIVITY,
    ACTIVITY_NAMES,
    CLASS_SETS,
    MODEL_CHANNELS,
    SESSION,
    TIMESTAMP,
)
from ml_core.evaluation.metrics import macro_f1
from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.io import atomic_path, partition_lock, replace_dir, staging_root, write_parquet

Smoothing = Literal["hmm", "median", "none"]
# Consecutive rows further apart than this are a gap (PAMAP2 samples every 0.01 s).
MAX_STEP_S = 0.05


# Windows whose labels are found at a time: [LABEL_BATCH, window] int64 plus a sort of it.
LABEL_BATCH = 1024


@dataclass(frozen=True)
class RecordingWindows:
    """Sliding windows over a recording: where each starts and ends, its segment, session and
    label. Their raw values are gathered a batch at a time (`values`): all of a recording's
    overlapping windows at once would hold window/stride times the recording."""

    rows: pl.DataFrame  # the recording's MODEL_CHANNELS, in time order
    window: int
    first_row: np.ndarray  # the row of `rows` each window starts at
    start_s: np.ndarray
    end_s: np.ndarray
    segment: np.ndarray  # contiguous-segment id of each window
    session: np.ndarray
    label: np.ndarray  # majority activity id of the window's rows

    def __len__(self) -> int:
        return len(self.first_row)

    def values(self, begin: int, end: int) -> np.ndarray:
        """Raw windows `begin:end` as [B, window, C] float32 in MODEL_CHANNELS order."""
        first = self.first_row[begin:end]
        rows = (first[:, None] + np.arange(self.window)[None, :]).ravel()
        gathered = self.rows[rows].to_numpy(order="c").astype(np.float32, copy=False)
        return gathered.reshape(len(first), self.window, len(MODEL_CHANNELS))


def _in_time_order(frame: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """`frame` sorted by session then time (copied only when it is not in that order), and
    where a row starts a new session."""
    if SESSION not in frame.columns:
        return frame, np.zeros(max(frame.height - 1, 0), dtype=bool)

    def session_changes(f: pl.DataFrame) -> np.ndarray:
        session = f[SESSION]
        return (session.slice(1) != session.slice(0, max(f.height - 1, 0))).to_numpy()

    changes = session_changes(frame)
    in_order = frame[SESSION].is_sorted() and bool(
        np.all((np.diff(frame[TIMESTAMP].to_numpy()) >= 0) | changes)
    )
    if in_order:
        return frame, changes
    # Only the columns a timeline reads are copied.
    frame = frame.select(TIMESTAMP, SESSION, ACTIVITY, *MODEL_CHANNELS).sort(
        [SESSION, TIMESTAMP], maintain_order=True
    )
    return frame, session_changes(frame)


def cut_windows(frame: pl.DataFrame, window: int, stride: int) -> RecordingWindows:
    """Sliding windows of `window` raw rows every `stride` rows, never across a time gap or a
    session boundary (vectorised; labels found in batches of LABEL_BATCH windows)."""
    frame, new_session = _in_time_order(frame)
    t = frame[TIMESTAMP].to_numpy()
    breaks = np.flatnonzero((np.diff(t) > MAX_STEP_S) | (np.diff(t) <= 0) | new_session) + 1
    bounds = np.concatenate([[0], breaks, [len(t)]])
    starts, segments = [], []
    for seg, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if b - a >= window:
            first = np.arange(a, b - window + 1, stride)
            starts.append(first)
            segments.append(np.full(len(first), seg))
    start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    segment = np.concatenate(segments) if segments else np.zeros(0, dtype=np.int64)
    labels = frame[ACTIVITY].to_numpy()
    offsets = np.arange(window)[None, :]
    window_label = [
        _row_mode(labels[start[i : i + LABEL_BATCH, None] + offsets].astype(np.int64))
        for i in range(0, len(start), LABEL_BATCH)
    ]
    session = (
        frame[SESSION].gather(start).to_numpy()
        if SESSION in frame.columns
        else np.full(len(start), "inbox")
    )
    return RecordingWindows(
        rows=frame.select(MODEL_CHANNELS),
        window=window,
        first_row=start,
        start_s=t[start],
        end_s=t[start + window - 1] if len(start) else np.zeros(0),
        segment=segment,
        session=session,
        label=np.concatenate(window_label) if window_label else np.zeros(0, dtype=np.int64),
    )


def _row_mode(values: np.ndarray) -> np.ndarray:
    """The most common value of each row (smallest on ties)."""
    if values.size == 0:
        return np.zeros(len(values), dtype=np.int64)
    ordered = np.sort(values, axis=1)
    change = np.ones_like(ordered, dtype=bool)
    change[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run_id = np.cumsum(change, axis=1) - 1
    counts = np.zeros_like(ordered)
    np.add.at(counts, (np.arange(len(ordered))[:, None], run_id), 1)
    best = counts.argmax(axis=1)
    first_of_run = np.where(change, np.arange(ordered.shape[1])[None, :], ordered.shape[1])
    position = np.sort(first_of_run, axis=1)[np.arange(len(ordered)), best]
    return ordered[np.arange(len(ordered)), position]


def viterbi(probs: np.ndarray, stay: float) -> np.ndarray:
    """Most likely class sequence under a sticky Markov chain with `probs` as emissions."""
    n, k = probs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    log_emit = np.log(np.clip(probs, 1e-12, 1.0))
    move = (1.0 - stay) / max(k - 1, 1)
    log_trans = np.log(np.where(np.eye(k, dtype=bool), stay, move))
    score = log_emit[0] - np.log(k)
    back = np.zeros((n, k), dtype=np.int64)
    for i in range(1, n):  # over windows (thousands), vectorised over classes
        candidates = score[:, None] + log_trans
        back[i] = candidates.argmax(axis=0)
        score = candidates.max(axis=0) + log_emit[i]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(score.argmax())
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


def smooth(
    probs: np.ndarray,
    segment: np.ndarray,
    method: Smoothing = "hmm",
    stay: float = 0.95,
    median_windows: int = 5,
) -> np.ndarray:
    """Smoothed class index per window, each contiguous segment on its own."""
    out = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    if method == "none":
        return out
    for seg in np.unique(segment):
        rows = np.flatnonzero(segment == seg)
        if method == "hmm":
            out[rows] = viterbi(probs[rows], stay)
        else:
            filtered = median_filter(probs[rows], size=(median_windows, 1), mode="nearest")
            out[rows] = filtered.argmax(axis=1)
    return out


def _macro_f1(true: np.ndarray, pred: np.ndarray) -> float | None:
    """The project's macro F1 (classes present in `true`); None without labelled windows."""
    return macro_f1(true, pred) if len(true) else None


@dataclass
class Timeline:
    frame: pl.DataFrame  # one row per window
    macro_f1_raw: float | None
    macro_f1_smoothed: float | None
    labelled_windows: int


def build_timeline(
    recording: pl.DataFrame,
    predict: Callable[[np.ndarray], np.ndarray],
    class_ids: list[int],
    window: int,
    stride: int,
    method: Smoothing = "hmm",
    batch_size: int = 512,
) -> Timeline:
    """Predict every window of `recording` with `predict` (raw windows -> probabilities over
    `class_ids`), `batch_size` windows at a time, smooth, and score both against the labels
    the recording has. Memory beyond the recording is a batch of windows and the
    probabilities, however long the recording."""
    cut = cut_windows(recording, window, stride)
    probs = (
        np.concatenate(
            [predict(cut.values(i, i + batch_size)) for i in range(0, len(cut), batch_size)]
        )
        if len(cut)
        else np.zeros((0, len(class_ids)))
    )
    ids = np.asarray(class_ids, dtype=np.int64)
    raw = ids[probs.argmax(axis=1)] if len(probs) else np.zeros(0, dtype=np.int64)
    smoothed = ids[smooth(probs, cut.segment, method)] if len(probs) else raw
    frame = pl.DataFrame(
        {
            "start_s": cut.start_s,
            "end_s": cut.end_s,
            "session": cut.session.astype(str),
            "segment": cut.segment,
            "true_activity_id": cut.label,
            "predicted_activity_id": raw,
            "smoothed_activity_id": smoothed,
            **{f"p_{c}": probs[:, i] for i, c in enumerate(class_ids)},
        }
    )
    scored = np.isin(cut.label, ids)  # activity 0 and classes outside the model's set
    return Timeline(
        frame=frame,
        macro_f1_raw=_macro_f1(cut.label[scored], raw[scored]),
        macro_f1_smoothed=_macro_f1(cut.label[scored], smoothed[scored]),
        labelled_windows=int(scored.sum()),
    )


def plot_timeline(timeline: Timeline, title: str, target: Path) -> Path:
    """Predicted (raw and smoothed) activities against the labels, as coloured bands in time."""
    frame = timeline.frame
    activities = sorted(
        set(frame["true_activity_id"].to_list())
        | set(frame["predicted_activity_id"].to_list())
        | set(frame["smoothed_activity_id"].to_list())
    )
    colour = {a: colormaps["tab20"](i % 20) for i, a in enumerate(activities)}
    sessions = frame["session"].unique(maintain_order=True).to_list() or ["(empty)"]
    fig = Figure(figsize=(14, 2.2 + 1.6 * len(sessions)))
    FigureCanvasAgg(fig)
    for i, session in enumerate(sessions):
        ax = fig.add_subplot(len(sessions), 1, i + 1)
        part = frame.filter(pl.col("session") == session)
        start, end = part["start_s"].to_numpy(), part["end_s"].to_numpy()
        for row, column in enumerate(
            ("true_activity_id", "predicted_activity_id", "smoothed_activity_id")
        ):
            values = part[column].to_numpy()
            ax.broken_barh(
                list(zip(start, end - start, strict=True)),
                (2 - row - 0.4, 0.8),
                facecolors=[colour[v] for v in values],
            )
        ax.set_yticks([2, 1, 0], ["labels", "predicted", "smoothed"])
        ax.set_title(f"{title}: {session}", fontsize=9)
        ax.set_xlabel("time (s)")
    handles = [Patch(color=colour[a], label=ACTIVITY_NAMES.get(a, str(a))) for a in activities]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(target)


def write_timeline(timeline: Timeline, target: Path) -> Path:
    return write_parquet(timeline.frame, target, compression="zstd")


# --- inbox recordings ---------------------------------------------------------------------------

# An inbox file's name without `.dat` becomes a partition key and a folder name: ASCII letters,
# digits, '.', '_' and '-', starting with a letter or digit (no path, no hidden name, no option).
INBOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_inbox_name(name: str) -> str:
    """`name` if it is a safe inbox recording name, else a ValueError saying what is allowed."""
    if not INBOX_NAME.fullmatch(name):
        raise ValueError(
            f"inbox recording name {name!r} is not allowed: use 1-100 ASCII letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


def inbox_recordings(inbox: Path) -> tuple[dict[str, tuple[int, float]], list[str]]:
    """The `.dat` files of `inbox` with a safe name, as name -> (bytes, modification time), and
    the file names skipped (unsafe or undecodable, shown with escapes). A file that vanishes
    while being listed is left for the next look."""
    found: dict[str, tuple[int, float]] = {}
    skipped: list[str] = []
    if not inbox.is_dir():
        return found, skipped
    for path in sorted(inbox.iterdir()):
        if path.suffix != ".dat":
            continue
        if not INBOX_NAME.fullmatch(path.stem):
            skipped.append(ascii(path.name))  # undecodable bytes come back as \udcxx escapes
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        found[path.stem] = (stat.st_size, stat.st_mtime)
    return found, skipped


# --- the registered champion over a recording --------------------------------------------------

CHAMPION_MODEL_NAME = "pamap2-activity"
CHAMPION_ALIAS = "champion"


@dataclass
class ServingModel:
    """A registered model version, the protocol it was trained under, and its predict."""

    name: str
    version: str
    run_id: str
    protocol: EvaluationProtocol
    predict: Callable[[np.ndarray], np.ndarray]

    @property
    def class_ids(self) -> list[int]:
        return list(CLASS_SETS[self.protocol.class_set])


def load_registered_model(
    tracking_uri: str, name: str = CHAMPION_MODEL_NAME, alias: str = CHAMPION_ALIAS
) -> ServingModel:
    """The model version `name@alias` from the MLflow Model Registry, as a raw-window
    predictor; its protocol comes from the params of the run that logged it.

    Only this platform's own models are loaded: the version must come from a run carrying the
    platform's tags, name a `torch.export` program published by `promote_champion`, and the
    downloaded file must match the sha256 recorded with the version; it is then loaded without
    unpickling anything (`load_serving_program`). Anything else (a pyfunc or pickled model, a
    run someone logged by hand) raises `UnsafeModelError` before any of its code could run."""
    import tempfile

    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ml_core.lifecycle.champion import FORMAT_TAG, SERVING_DIR, SHA256_TAG
    from ml_core.lifecycle.serving import (
        SERVING_FILE,
        SERVING_FORMAT,
        UnsafeModelError,
        load_serving_program,
    )
    from ml_core.lifecycle.tracking import PLATFORM, PLATFORM_TAG
    from ml_core.lifecycle.uris import safe_uri

    client = MlflowClient(tracking_uri=tracking_uri)
    where = f"{name}@{alias} in the registry at {safe_uri(tracking_uri)}"
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise LookupError(f"no model version {where}: materialize champion_model first") from exc
    refused = f"refusing model version {where} (version {version.version})"
    if version.tags.get(FORMAT_TAG) != SERVING_FORMAT or not version.tags.get(SHA256_TAG):
        raise UnsafeModelError(
            f"{refused}: it is not a {SERVING_FORMAT} program published by champion_model "
            f"(tag {FORMAT_TAG}={version.tags.get(FORMAT_TAG)!r}); only this platform's own "
            "models are loaded"
        )
    expected_source = f"runs:/{version.run_id}/{SERVING_DIR}"
    if not version.run_id or version.source != expected_source:
        raise UnsafeModelError(f"{refused}: its source {version.source!r} is not {expected_source}")
    run = client.get_run(str(version.run_id))
    missing = [t for t in ("variant", "model", "protocol_id") if t not in run.data.tags]
    if run.data.tags.get(PLATFORM_TAG) != PLATFORM or missing:
        raise UnsafeModelError(
            f"{refused}: run {version.run_id} was not logged by this platform "
            f"(tag {PLATFORM_TAG}={run.data.tags.get(PLATFORM_TAG)!r}, missing tags {missing})"
        )
    protocol = EvaluationProtocol.from_params(run.data.params, f"model {name}@{alias}")
    with tempfile.TemporaryDirectory() as folder:
        local = Path(
            download_artifacts(
                run_id=str(version.run_id),
                artifact_path=f"{SERVING_DIR}/{SERVING_FILE}",
                dst_path=folder,
                tracking_uri=tracking_uri,
            )
        )
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        if digest != version.tags[SHA256_TAG]:
            raise UnsafeModelError(
                f"{refused}: {SERVING_DIR}/{SERVING_FILE} of run {version.run_id} has sha256 "
                f"{digest}, not the {version.tags[SHA256_TAG]} registered with the version"
            )
        predict = load_serving_program(local)
    return ServingModel(name, str(version.version), str(version.run_id), protocol, predict)


def run_timeline(
    recording: pl.DataFrame,
    model: ServingModel,
    out_dir: Path,
    title: str,
    method: Smoothing = "hmm",
) -> dict[str, object]:
    """Predict, smooth and score `recording`, then write `timeline.parquet` and `timeline.png`
    into `out_dir`. Everything is computed before anything is written, and both files are
    written into a staging folder and swapped in together, so a failure leaves the previous
    timeline in place; a second run of the same recording meanwhile fails (`partition_lock`)."""
    p = model.protocol
    # The serving model takes raw 100 Hz rows and decimates itself.
    timeline = build_timeline(
        recording,
        model.predict,
        model.class_ids,
        p.window * p.decimate,
        p.stride * p.decimate,
        method,
    )
    out_dir = Path(out_dir)
    # One run per recording at a time; both files are swapped in together.
    with (
        partition_lock(out_dir.parent, out_dir.name),
        staging_root(out_dir.parent, out_dir.name) as staged,
    ):
        write_timeline(timeline, staged / "timeline.parquet")
        plot_timeline(
            timeline,
            f"{title} · {model.name} v{model.version} · {method}",
            staged / "timeline.png",
        )
        replace_dir(staged, out_dir)
    parquet, plot = out_dir / "timeline.parquet", out_dir / "timeline.png"
    change = (
        None
        if timeline.macro_f1_raw is None or timeline.macro_f1_smoothed is None
        else timeline.macro_f1_smoothed - timeline.macro_f1_raw
    )
    return {
        "windows": len(timeline.frame),
        "labelled_windows": timeline.labelled_windows,
        "macro_f1_raw": timeline.macro_f1_raw,
        "macro_f1_smoothed": timeline.macro_f1_smoothed,
        "smoothing_change": change,
        "smoothing": method,
        "model": f"{model.name} v{model.version} (run {model.run_id})",
        "protocol": p.describe(),
        "parquet": str(parquet),
        "plot": str(plot),
    }
