"""The Dagster UI in a real browser: the graph is shown, a partition launched from it runs, a
changed raw file shows its subject's partition as stale (with the cause), and a failed schema
check shows for its subject only.

Starts `dagster-webserver` on the project's workspace.yaml against a private instance and the
tiny synthetic data, then drives the system's Chromium with Playwright (or Playwright's own
download when present; with no browser the test skips and names what to install, and in CI,
which installs Chromium, it fails). Screenshots go to `tests/e2e/artifacts/` and to the test's
tmp_path; with PAMAP_UPDATE_DOCS=1 the stale partition and the partition's check result also go
to `docs/images/`, which the docs show (so a test run leaves the tracked files alone). On a failure
the page's screenshot and HTML are saved there too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from playwright.sync_api import Page, Playwright, expect, sync_playwright

from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES
from ml_core.models import model_names
from ml_core.paths import DataPaths
from orchestration.defs.partitions import fold_model_partitions, register_variants
from orchestration.staleness import observe_raw_files
from tests.e2e.conftest import (
    REPO_ROOT,
    _definitions,
    free_port,
    materialize,
    running_process,
    venv_program,
    wait_for_http,
)
from tests.raw_edits import edit_labelled_row

pytestmark = pytest.mark.browser

DOCS = REPO_ROOT / "docs" / "images"  # the screenshots the docs show
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_S = 300
LAUNCHED_SUBJECT = "103"
GROUPS = ("ingest", "prepare", "train", "report")
ASSETS = (
    "raw_recording",
    "validated_recording",
    "imputed_recording",
    "activity_shards",
    "fold_manifests",
    "feature_stats",
    "trained_model",
    "evaluation_bundle",
    "leaderboard",
)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_CHROMIUM = (
    "install Chromium (Debian/Ubuntu: `apt-get install -y chromium`; or Playwright's own build: "
    "`uv run playwright install chromium`)"
)


def _chromium(playwright: Playwright) -> str:
    """The system's Chromium, else a browser that `playwright install` downloaded. With neither,
    the test skips and says what to install, except in CI (`CI=true`), where it fails: CI
    (`.ci/run`) installs Chromium, so a missing one there is a broken setup, not a choice."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    downloaded = Path(playwright.chromium.executable_path)
    if downloaded.exists():
        return str(downloaded)
    message = f"no Chromium on PATH ({', '.join(CHROMIUM_NAMES)}): {INSTALL_CHROMIUM}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI must run the browser test (.ci/run installs it)")
    pytest.skip(message)


def _write_instance_yaml(home: Path) -> None:
    """The project's instance settings, with runs launched straight from the webserver.

    The project's queued coordinator needs `dagster-daemon` to dequeue runs; the default
    coordinator launches them directly, so this test needs one process fewer. The community
    pop-up is turned off because it covers the page on a fresh instance.
    """
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
    config["nux"] = {"enabled": False}
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def webserver(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dg.DagsterInstance]]:
    """The webserver on a private instance in which two subjects are ingested (in process)."""
    home = tmp_path / "dagster_home"
    _write_instance_yaml(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    port = free_port()
    cmd = [
        venv_program("dagster-webserver"),
        *("-h", "127.0.0.1", "-p", str(port)),
        *("-w", str(REPO_ROOT / "workspace.yaml")),
    ]
    log_path = tmp_path / "webserver.log"
    with running_process(cmd, log_path) as proc, dg.DagsterInstance.get() as instance:
        # The webserver reads the instance live, so its slow start overlaps these runs.
        register_variants(instance, model_names())
        observe_raw_files(instance)
        for subject in ("101", "102"):
            materialize("ingest_job", instance, subject)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/server_info", proc, log_path, timeout=300)
        yield url, instance


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(playwright), args=["--no-sandbox", "--headless=new"]
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _snapshot(page: Page, name: str, folders: tuple[Path, ...]) -> None:
    for folder in folders:
        page.screenshot(path=folder / f"{name}.png", full_page=True)


@contextlib.contextmanager
def _dump_on_failure(page: Page, folders: tuple[Path, ...]) -> Iterator[None]:
    """On any failure, keep what the browser showed: a screenshot and the page's HTML."""
    try:
        yield
    except BaseException:
        for folder in folders:
            # A dead page must not hide the original error.
            with contextlib.suppress(Exception):
                page.screenshot(path=folder / "dagster_ui_failure.png", full_page=True)
                (folder / "dagster_ui_failure.html").write_text(page.content())
        raise


def _wait_for_ui_run(instance: dg.DagsterInstance, partition: str) -> dg.DagsterRun:
    """The run the UI launched for `partition`, once it has finished."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    runs: list[dg.DagsterRun] = []
    while time.monotonic() < deadline:
        runs = list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition})))
        if runs and all(run.is_finished for run in runs):
            assert len(runs) == 1, [run.run_id for run in runs]
            return runs[0]
        time.sleep(1)
    pytest.fail(f"no finished run for partition {partition} after {RUN_TIMEOUT_S}s: {runs}")


def test_ui_shows_the_graph_and_runs_a_partition_launched_from_it(
    page: Page,  # first: with no browser the test skips before the webserver starts
    webserver: tuple[str, dg.DagsterInstance],
    data_root: Path,
    artifacts_dir: Path,
    tmp_path: Path,
) -> None:
    url, instance = webserver
    folders = (artifacts_dir, tmp_path)
    with _dump_on_failure(page, folders):
        # The catalog: every asset, its stage group, and the partition count of each kind.
        page.goto(f"{url}/assets")
        for asset in ASSETS:
            expect(page.locator(f'a[href="/assets/{asset}"]').first).to_be_visible()
        for group in GROUPS:
            group_link = page.get_by_role("link", name=re.compile(rf"(^|\s){group}$"))
            expect(group_link.first).to_be_visible()
        for count in (
            len(SUBJECTS),
            len(FOLD_NAMES),
            len(fold_model_partitions.get_partition_keys(dynamic_partitions_store=instance)),
        ):
            expect(page.get_by_text(f"{count} partitions").first).to_be_visible()
        _snapshot(page, "dagster_ui_catalog", folders)

        # The lineage page lists the four stage groups.
        page.goto(f"{url}/asset-groups")
        for group in GROUPS:
            expect(page.get_by_text(group, exact=True).first).to_be_visible()
        _snapshot(page, "dagster_ui_lineage", folders)

        # Launch one subject partition of raw_recording from its asset page.
        page.goto(f"{url}/assets/raw_recording")
        page.get_by_role("button", name=re.compile(r"Materialize…$")).first.click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("Launch runs to materialize raw_recording")).to_be_visible()
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_placeholder("Filter partitions").fill(LAUNCHED_SUBJECT)
        page.get_by_title(LAUNCHED_SUBJECT, exact=True).click()
        page.keyboard.press("Escape")
        expect(page.get_by_placeholder("Filter partitions")).to_be_hidden()
        expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
        _snapshot(page, "dagster_ui_launch_dialog", folders)
        dialog.get_by_role("button", name="Launch 1 run").click()
        expect(dialog).to_be_hidden()

        run = _wait_for_ui_run(instance, LAUNCHED_SUBJECT)
        assert run.tags.get("dagster/from_ui") == "true"
        assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
        assert LAUNCHED_SUBJECT in instance.get_materialized_partitions(
            dg.AssetKey("raw_recording")
        )
        assert DataPaths(data_root).table("raw_recording", int(LAUNCHED_SUBJECT)).exists()

        # The run's page in the UI says it succeeded.
        page.goto(f"{url}/runs/{run.run_id}")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        _snapshot(page, "dagster_ui_run_success", folders)

        # What the docs show (docs/images/): subject 101's raw file changes, so its partition turns
        # stale and says why; subject 102's file fails the schema check, for that subject only.
        paths = DataPaths(data_root)
        edit_labelled_row(paths.dat_file("protocol", 101), field=4, change=0.5)
        edit_labelled_row(paths.dat_file("protocol", 102), field=3, change=1000.0)
        observe_raw_files(instance)
        failed = (
            _definitions()
            .resolve_job_def("ingest_job")
            .execute_in_process(instance=instance, partition_key="102", raise_on_error=False)
        )
        assert not failed.success
        with_docs = (*folders, DOCS) if os.environ.get("PAMAP_UPDATE_DOCS") == "1" else folders

        page.goto(f"{url}/assets/raw_recording?view=partitions&partition=101")
        unsynced = page.get_by_text(re.compile(r"^Unsynced"))
        expect(unsynced.first).to_be_visible()
        unsynced.first.click()
        expect(page.get_by_text("has a new data version").first).to_be_visible()
        _snapshot(page, "dagster_ui_stale_partition", with_docs)

        # The schema check's partitions: passed for 101, failed for 102 with its failure cases.
        page.goto(f"{url}/assets/validated_recording?view=checks")
        expect(page.get_by_text("Execution history", exact=True)).to_be_visible()
        page.get_by_text("Partitions", exact=True).last.click()
        expect(page.get_by_text("Failed (1)", exact=True)).to_be_visible()
        expect(page.get_by_text("Passed (1)", exact=True)).to_be_visible()
        page.locator(":text-is('102'):visible").last.click()
        expect(page.get_by_text("hand_temperature_c").first).to_be_visible()
        _snapshot(page, "dagster_ui_partition_check", with_docs)
