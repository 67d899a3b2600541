"""The champion is loaded only as this platform's own torch.export program, never by unpickling
what someone wrote into the registry: a foreign or pickled model is refused and runs no code."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.lifecycle.champion import (
    FORMAT_TAG,
    SERVING_DIR,
    SHA256_TAG,
    LeaderboardRow,
    Selection,
    promote_champion,
)
from ml_core.lifecycle.serving import (
    SERVING_FILE,
    SERVING_FORMAT,
    UnsafeModelError,
    check_serving_archive,
    load_serving_program,
)
from ml_core.lifecycle.timeline import CHAMPION_ALIAS, CHAMPION_MODEL_NAME, load_registered_model
from ml_core.lifecycle.tracking import PLATFORM, PLATFORM_TAG, MlflowTracker
from ml_core.training.config import TrainConfig

RUN_TAGS = {"variant": "tcn", "model": "temporal_cnn", "protocol_id": "p0"}


class _Marker(mlflow.pyfunc.PythonModel):
    """Unpickling this object creates the file `path`: stands for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))

    def predict(self, context, model_input):  # noqa: ANN001, ARG002 (MLflow's signature)
        return model_input


def _program_bytes() -> bytes:
    """A plain torch.export program (a softmax over a linear layer)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=-1))
    program = torch.export.export(
        module, (torch.zeros(2, 3),), dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _register(
    client: MlflowClient, run_id: str, payload: bytes, tmp_path: Path, forged_tags: bool = True
) -> None:
    """Upload `payload` as the run's serving program and point `champion` at it, with the
    version tags champion_model writes (so only the run and the file can give it away)."""
    _upload(client, run_id, payload, tmp_path)
    tags = {FORMAT_TAG: SERVING_FORMAT, SHA256_TAG: hashlib.sha256(payload).hexdigest()}
    try:
        client.get_registered_model(CHAMPION_MODEL_NAME)
    except MlflowException:
        client.create_registered_model(CHAMPION_MODEL_NAME)
    version = client.create_model_version(
        CHAMPION_MODEL_NAME,
        source=f"runs:/{run_id}/{SERVING_DIR}",
        run_id=run_id,
        tags=tags if forged_tags else {},
    )
    client.set_registered_model_alias(CHAMPION_MODEL_NAME, CHAMPION_ALIAS, version.version)


def _upload(client: MlflowClient, run_id: str, payload: bytes, tmp_path: Path) -> None:
    source = tmp_path / "upload" / SERVING_FILE
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(payload)
    client.log_artifact(run_id, str(source), artifact_path=SERVING_DIR)


def _platform_run(tracker: MlflowTracker) -> str:
    with tracker.run("holdout-106/tcn", RUN_TAGS) as run_id:
        tracker.log_params(EvaluationProtocol.of(TrainConfig()).to_params())
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowTracker]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri, MlflowTracker(uri)


def test_platform_processes_refuse_mlflow_pickles(store: tuple[str, MlflowTracker]) -> None:
    """Importing the platform's tracking turns MLflow's pickle deserialization off, so even a
    direct pyfunc load of a cloudpickled model fails before unpickling."""
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False
    uri, tracker = store
    marker = Path(uri.removeprefix("sqlite:///")).parent / "pwned"
    mlflow.set_experiment("anyone")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=_Marker(marker))
    with pytest.raises(MlflowException, match="pickle is disallowed"):
        mlflow.pyfunc.load_model(info.model_uri)
    assert not marker.exists()


def test_a_pyfunc_pickle_behind_the_alias_is_refused_and_runs_nothing(
    store: tuple[str, MlflowTracker], tmp_path: Path
) -> None:
    uri, tracker = store
    marker = tmp_path / "pwned"
    run_id = _platform_run(tracker)  # even from a run with the platform's tags
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=_Marker(marker))
    client = MlflowClient(uri)
    client.create_registered_model(CHAMPION_MODEL_NAME)
    version = client.create_model_version(
        CHAMPION_MODEL_NAME, source=info.model_uri, run_id=run_id, model_id=info.model_id
    )
    client.set_registered_model_alias(CHAMPION_MODEL_NAME, CHAMPION_ALIAS, version.version)
    with pytest.raises(UnsafeModelError, match="not a torch.export program published by"):
        load_registered_model(uri)
    assert not marker.exists()


def test_a_pickle_disguised_as_the_serving_program_is_refused(
    store: tuple[str, MlflowTracker], tmp_path: Path
) -> None:
    """Right run tags, right version tags and sha256, but the file is a pickle (raw, or a
    torch.save zip): refused by its content, and the pickle never runs."""
    uri, tracker = store
    client = MlflowClient(uri)
    marker = tmp_path / "pwned"
    for pickled in (_pickle_bytes(marker), _torch_save_bytes(marker)):
        _register(client, _platform_run(tracker), pickled, tmp_path)
        with pytest.raises(UnsafeModelError, match="not a plain torch.export program|not a .pt2"):
            load_registered_model(uri)
        assert not marker.exists()


def test_a_run_without_the_platform_tags_is_refused(
    store: tuple[str, MlflowTracker], tmp_path: Path
) -> None:
    uri, _ = store
    mlflow.set_experiment("someone-else")
    with mlflow.start_run() as run:
        mlflow.set_tags(RUN_TAGS)  # looks like training, but not started by the platform
    _register(MlflowClient(uri), run.info.run_id, _program_bytes(), tmp_path)
    with pytest.raises(UnsafeModelError, match=f"not logged by this platform.*{PLATFORM_TAG}"):
        load_registered_model(uri)


def test_a_tampered_program_is_refused_and_a_genuine_one_loads(
    store: tuple[str, MlflowTracker], tmp_path: Path
) -> None:
    uri, tracker = store
    client = MlflowClient(uri)
    run_id = _platform_run(tracker)
    assert client.get_run(run_id).data.tags[PLATFORM_TAG] == PLATFORM
    _register(client, run_id, _program_bytes(), tmp_path)
    served = load_registered_model(uri)
    probs = served.predict(np.ones((5, 3), dtype=np.float32))
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1.0)

    # The file replaced after registration: its sha256 no longer matches the version's.
    replaced = tmp_path / "replaced" / SERVING_FILE
    replaced.parent.mkdir()
    replaced.write_bytes(_program_bytes()[:-1] + b"\0")
    client.log_artifact(run_id, str(replaced), artifact_path=SERVING_DIR)
    with pytest.raises(UnsafeModelError, match="sha256"):
        load_registered_model(uri)


def test_the_archive_check_refuses_pickled_payloads_and_native_code(tmp_path: Path) -> None:
    genuine = tmp_path / "genuine.pt2"
    genuine.write_bytes(_program_bytes())
    check_serving_archive(genuine)
    assert load_serving_program(genuine)(np.zeros((1, 3), np.float32)).shape == (1, 2)

    def rewritten(name: str, change) -> Path:  # noqa: ANN001
        target = tmp_path / name
        with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(target, "w") as dst:
            for item in src.namelist():
                dst.writestr(item, change(item, src.read(item)))
            top = src.namelist()[0].split("/")[0]
            if name == "native.pt2":
                dst.writestr(f"{top}/data/aotinductor/model/model.so", b"\x7fELF")
        return target

    def pickled_weights(item: str, data: bytes) -> bytes:
        if not item.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        for entry in config["config"].values():
            entry["use_pickle"] = True
        return json.dumps(config).encode()

    with pytest.raises(UnsafeModelError, match="as pickle; refused"):
        load_serving_program(rewritten("pickled.pt2", pickled_weights))
    with pytest.raises(UnsafeModelError, match="aotinductor"):
        load_serving_program(rewritten("native.pt2", lambda _, data: data))


def _pickle_bytes(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(_Marker(marker))


def _torch_save_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Marker(marker), buffer)
    return buffer.getvalue()


def test_a_champion_that_is_no_serving_program_is_replaced(
    store: tuple[str, MlflowTracker], tmp_path: Path
) -> None:
    """A champion registered before the platform exported one (or by hand) holds no F1 against
    a candidate: the next promotion replaces it, so timelines get a loadable model again."""
    uri, tracker = store
    client = MlflowClient(uri)
    old_run = _platform_run(tracker)
    client.create_registered_model(CHAMPION_MODEL_NAME)
    old = client.create_model_version(
        CHAMPION_MODEL_NAME,
        source=f"runs:/{old_run}/model",
        run_id=old_run,
        tags={"pooled_loso_macro_f1": "0.99"},
    )
    client.set_registered_model_alias(CHAMPION_MODEL_NAME, CHAMPION_ALIAS, old.version)
    with pytest.raises(UnsafeModelError):
        load_registered_model(uri)

    run_id = _platform_run(tracker)
    row = LeaderboardRow("tcn", "p0", "protocol12", (), True, 0.5, 0.05, run_id, "holdout-106", ".")

    def publish(candidate: LeaderboardRow) -> str:
        program = _program_bytes()
        _upload(client, str(candidate.run_id), program, tmp_path)
        return hashlib.sha256(program).hexdigest()

    promotion = promote_champion(client, Selection(row, None), publish, CHAMPION_MODEL_NAME)
    assert promotion.promoted and "replaces version 1, which is not a torch.export" in (
        promotion.reason
    )
    assert load_registered_model(uri).version == promotion.champion_version
