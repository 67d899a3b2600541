"""Variants from experiments.yaml: sweep expansion, stable names, validation that names the
file, line, variant and setting, and nothing returned on error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.models import get_spec, model_names
from ml_core.training.train import TrainConfig
from ml_core.training.variants import VARIANTS_FILE, VariantError, load_variants


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.yaml"
    path.write_text(text)
    return path


def _file_variants(path: Path) -> dict:
    return {v.name: v for v in load_variants(path) if not v.builtin}


def test_the_registered_models_are_the_builtin_variants(tmp_path):
    variants = load_variants(tmp_path / "absent.yaml")
    assert [v.name for v in variants] == model_names()
    assert all(v.builtin and v.name == v.model for v in variants)
    assert variants[0].train_config() == TrainConfig()


def test_a_models_own_training_defaults_are_its_builtin_variants_under_the_same_protocol(
    tmp_path,
):
    variants = {v.name: v for v in load_variants(tmp_path / "absent.yaml")}
    dcl = variants["deep_conv_lstm"]
    assert get_spec("deep_conv_lstm").train_defaults == {"epochs": 12}
    assert dcl.settings() == {"epochs": 12} and dcl.train_config().epochs == 12
    assert dcl.resolved_settings()["epochs"] == 12 and dcl.resolved_settings()["lr"] == 0.002
    # Trained longer, evaluated on the same task: one protocol, one leaderboard table.
    lstm = variants["lstm"].train_config()
    assert EvaluationProtocol.of(dcl.train_config()) == EvaluationProtocol.of(lstm)


def test_lists_expand_to_the_cartesian_product_with_readable_names(tmp_path):
    path = _write(
        tmp_path,
        """
variants:
  lstm_sweep:
    model: lstm
    lr: [0.002, 0.0005]
    loss: focal
    seed: 5
    seeds: 2
    model_args: {hidden: [64, 128], pooling: last}
""",
    )
    variants = _file_variants(path)
    assert sorted(variants) == [
        "lstm_sweep-lr=0.0005-m.hidden=128",
        "lstm_sweep-lr=0.0005-m.hidden=64",
        "lstm_sweep-lr=0.002-m.hidden=128",
        "lstm_sweep-lr=0.002-m.hidden=64",
    ]
    one = variants["lstm_sweep-lr=0.0005-m.hidden=128"]
    assert one.entry == "lstm_sweep" and one.model == "lstm" and one.seeds == 2
    config = one.train_config()
    assert (config.lr, config.loss, config.seed) == (0.0005, "focal", 5)
    assert config.model_overrides == {"hidden": 128, "pooling": "last"}
    assert config.epochs == TrainConfig.epochs  # not overridden


def test_names_are_stable_when_a_sweep_grows_or_is_reordered(tmp_path):
    first = _file_variants(
        _write(tmp_path, "variants:\n  s:\n    model: lstm\n    window: [128, 256]\n")
    )
    grown = _file_variants(
        _write(tmp_path, "variants:\n  s:\n    model: lstm\n    window: [512, 256, 128]\n")
    )
    assert set(first) < set(grown)
    for name, variant in first.items():
        assert grown[name] == variant


def test_protocol_settings_reach_the_window_config(tmp_path):
    path = _write(
        tmp_path,
        "variants:\n  w:\n    model: temporal_cnn\n    window: 128\n    stride: 64\n"
        "    decimate: 2\n    class_set: all18\n    epochs: 3\n",
    )
    (variant,) = _file_variants(path).values()
    assert variant.name == "w"  # nothing swept: the entry's own name
    window = variant.train_config().window
    assert (window.window, window.stride, window.decimate, window.class_set) == (
        128,
        64,
        2,
        "all18",
    )


@pytest.mark.parametrize(
    ("entry", "line", "setting", "message"),
    [
        ("model: resnet", 4, "model", "unknown model 'resnet'"),
        ("model: lstm\n    learning_rate: 0.1", 5, "learning_rate", "unknown setting"),
        ("model: lstm\n    lr: fast", 5, "lr", "expected float, got 'fast'"),
        ("model: lstm\n    epochs: [2, 0]", 5, "epochs", "epochs must be >= 1"),
        ("model: lstm\n    class_set: everything", 5, "class_set", "unknown class_set"),
        ("model: lstm\n    loss: hinge", 5, "loss", "loss must be one of"),
        ("model: lstm\n    model_args: {depth: 3}", 5, "model_args.depth", "unknown setting"),
        ("model: lstm\n    model_args: {hidden: 6.5}", 5, "model_args.hidden", "expected int"),
        ("model: lstm\n    model_args: {pooling: max}", 5, "model_args", "pooling must be"),
        ("model: lstm\n    seeds: [1, 1]", 5, "seeds", "listed twice"),
        ("model: lstm\n    seeds: 0", 5, "seeds", "expected an integer >= 1"),
        ("model: lstm\n    balanced_sampling: 1", 5, "balanced_sampling", "expected bool"),
        ("model: lstm\n    lr: .nan", 5, "lr", "expected a finite number, got nan"),
        ("model: lstm\n    lr: [0.001, .inf]", 5, "lr", "expected a finite number, got inf"),
        ("model: lstm\n    weight_decay: -0.1", 5, "weight_decay", "must be a finite number >= 0"),
    ],
)
def test_a_bad_variant_names_file_line_variant_and_setting(tmp_path, entry, line, setting, message):
    path = _write(tmp_path, f"# sweeps\nvariants:\n  bad_one:\n    {entry}\n")
    with pytest.raises(VariantError) as error:
        load_variants(path)
    (problem,) = error.value.problems
    assert problem.startswith(f"{path}:{line}: variant 'bad_one', setting '{setting}': ")
    assert message in problem


def test_one_bad_variant_registers_nothing_and_every_problem_is_listed(tmp_path):
    path = _write(
        tmp_path,
        "variants:\n  good:\n    model: lstm\n  bad:\n    model: lstm\n    lr: -1\n"
        "  worse:\n    model: gpt\n",
    )
    with pytest.raises(VariantError) as error:
        load_variants(path)
    assert [p.split(": ")[1] for p in error.value.problems] == [
        "variant 'bad', setting 'lr'",
        "variant 'worse', setting 'model'",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "variants:\n  a:\n    model: lstm\n  a:\n    model: lstm_x\n",
            ":4: not valid YAML: duplicate key 'a' (first on line 2)",
        ),
        ("variants:\n  lstm:\n    model: lstm\n", "'lstm' is taken by the built-in variant"),
        ("variants:\n  Big-Name:\n    model: lstm\n", "setting 'name'"),
        ("variants: [a, b]\n", ":1: `variants` must be a mapping"),
        ("models:\n  a: {model: lstm}\n", ":1: expected one top-level key `variants:`"),
        ("variants:\n  a: {model: lstm\n", "not valid YAML"),
        ("variants:\n  a:\n    model: lstm\n    lr: 0.1\x07\n", ":4: not valid YAML: unacceptable"),
        ("variants:\n  ? [a, b]\n  : {model: lstm}\n", ":2: not valid YAML: a key must be a name"),
        ("variants:\n  a:\n    ? {x: 1}\n    : 2\n", ":3: not valid YAML: a key must be a name"),
        (
            "variants:\n  big:\n    model: lstm\n    lr: [1, 2, 3, 4, 5]\n"
            "    weight_decay: [0, 1, 2, 3, 4]\n    epochs: [1, 2, 3]\n",
            ":2: variant 'big': the sweep makes 75 variants, more than 64",
        ),
    ],
)
def test_file_level_problems(tmp_path, text, message):
    with pytest.raises(VariantError) as error:
        load_variants(_write(tmp_path, text))
    assert message in str(error.value)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "experiments.yaml"
    path.write_bytes(b"variants:\n  a:\n    description: caf\xe9\n    model: lstm\n")
    with pytest.raises(VariantError, match=r"experiments.yaml:3: not UTF-8 text \(byte 0xe9"):
        load_variants(path)


def test_a_nan_learning_rate_is_refused_by_the_launchpad_config():
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="TrainConfig.lr must be a finite number > 0"):
            TrainConfig(lr=bad)


def test_a_run_sets_only_where_and_how_it_trains(tmp_path):
    (lstm,) = [v for v in load_variants(tmp_path / "absent.yaml") if v.name == "lstm"]
    config = lstm.train_config(device="cpu", compile=True, deterministic=False)
    assert (config.device, config.compile, config.deterministic) == ("cpu", True, False)
    for setting in ({"epochs": 1}, {"lr": 0.1}, {"class_set": "all18"}):
        with pytest.raises(ValueError, match=f"{next(iter(setting))} would change its result"):
            lstm.train_config(**setting)


def test_the_settings_version_changes_exactly_when_a_result_would(tmp_path):
    text = "variants:\n  a:\n    model: lstm\n    lr: 0.001\n  b:\n    model: lstm\n"
    before = _file_variants(_write(tmp_path, text))
    edited = _file_variants(_write(tmp_path, text.replace("0.001", "0.0005")))
    assert edited["a"].settings_version() != before["a"].settings_version()
    assert edited["b"].settings_version() == before["b"].settings_version()
    # Spelling out a default, or a model argument's default, decides nothing new.
    same = _write(tmp_path, text + "    epochs: 6\n    model_args:\n      hidden: 64\n")
    assert get_spec("lstm").config_cls().hidden == 64
    assert _file_variants(same)["b"].settings_version() == before["b"].settings_version()
    # Seeds, a window setting and a model argument each change the result.
    for extra in ("    seeds: 2\n", "    stride: 64\n", "    model_args:\n      hidden: 32\n"):
        changed = _file_variants(_write(tmp_path, text + extra))["b"]
        assert changed.settings_version() != before["b"].settings_version(), extra
    resolved = before["a"].resolved_settings()
    assert resolved["model"] == "lstm" and resolved["seeds"] == 1
    assert resolved["model_overrides"]["hidden"] == 64  # the model's defaults are resolved
    assert "device" not in resolved and "compile" not in resolved


def test_the_projects_experiments_file_is_valid():
    variants = [v for v in load_variants(VARIANTS_FILE) if not v.builtin]
    assert variants, f"{VARIANTS_FILE} defines no variant"
    assert len({v.name for v in variants}) == len(variants)


def test_pamap_variants_lists_or_refuses(tmp_path, capsys):
    from orchestration.cli import main

    good = _write(tmp_path, "variants:\n  s:\n    model: lstm\n    lr: [0.01, 0.001]\n")
    assert main(["variants", "--file", str(good)]) == 0
    out = capsys.readouterr().out
    assert "s-lr=0.01 " in out and "s-lr=0.001 " in out
    assert f"{len(model_names()) + 2} variants (2 from {good})" in out
    bad = _write(tmp_path, "variants:\n  s:\n    model: lstm\n    window: 1\n")
    assert main(["variants", "--file", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{bad}:4: variant 's', setting 'window': WindowConfig.window must be >= 2" in (
        captured.err
    )


def test_a_variant_sets_the_augmentation_and_an_unknown_field_names_its_line(tmp_path):
    path = _write(
        tmp_path,
        "variants:\n  plain:\n    model: lstm\n    augment: {enabled: false, jitter_std: 0.1}\n",
    )
    plain = _file_variants(path)["plain"]
    config = plain.train_config()
    assert not config.augment.enabled and config.augment.jitter_std == 0.1
    assert config.training_settings()["augment"]["enabled"] is False
    bad = _write(tmp_path, "variants:\n  bad:\n    model: lstm\n    augment: {shear: 1}\n")
    with pytest.raises(VariantError, match=r"experiments.yaml:4: .*'augment'.*shear"):
        load_variants(bad)
