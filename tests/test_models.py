"""Contract tests run over every registered torch model: what training and evaluation rely on."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml_core.data.columns import MODALITIES
from ml_core.models import create_model, get_spec, model_names

CHANNELS = {m: len(cols) for m, cols in MODALITIES.items()}
TORCH_MODELS = [n for n in model_names() if get_spec(n).kind == "torch"]
# Every torch model with its defaults, plus the options that take another code path.
CASES = [pytest.param(n, {}, id=n) for n in TORCH_MODELS] + [
    pytest.param("lstm", {"pooling": "last"}, id="lstm-last"),
    pytest.param("deep_conv_lstm", {"pooling": "last"}, id="deep_conv_lstm-last"),
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tests run beside other work on a small machine; one thread each keeps timings sane.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(
    name: str, n_classes: int = 5, channels: dict[str, int] | None = None, **cfg
) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, n_classes, CHANNELS if channels is None else channels, **cfg)


def inputs(
    channels: dict[str, int], b: int, t: int, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Random normal values, every sample present."""
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(b, t, c, generator=g) for m, c in channels.items()}
    present = {m: torch.ones(b, t, dtype=torch.bool) for m in channels}
    return x, present


def gappy_inputs(
    channels: dict[str, int], t: int, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Four windows: all present; scattered gaps; first modality wholly missing; nothing."""
    x, present = inputs(channels, 4, t, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for m in channels:
        present[m][1] = torch.rand(t, generator=g) > 0.3
        present[m][3] = False
    present[next(iter(channels))][2] = False
    return x, present


def replace_missing(
    x: dict[str, Tensor], present: dict[str, Tensor], seed: int
) -> dict[str, Tensor]:
    """`x` with every missing sample set to large random values."""
    g = torch.Generator().manual_seed(seed)
    return {
        m: torch.where(present[m].unsqueeze(-1), v, 100 * torch.randn(v.shape, generator=g))
        for m, v in x.items()
    }


@pytest.mark.parametrize(("name", "cfg"), CASES)
@pytest.mark.parametrize("t", [17, 100, 256])
def test_logits_have_shape_batch_by_classes_and_are_finite(name: str, cfg: dict, t: int) -> None:
    model = build(name, n_classes=7, **cfg).eval()
    with torch.no_grad():
        logits = model(*gappy_inputs(CHANNELS, t))
    assert logits.shape == (4, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_every_parameter_gets_a_gradient(name: str, cfg: dict) -> None:
    model = build(name, **cfg).train()
    x, present = inputs(CHANNELS, 8, 64)
    F.cross_entropy(model(x, present), torch.arange(8) % 5).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not without, f"{name}: parameters without gradient: {without}"


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_values_of_missing_samples_do_not_change_the_output(name: str, cfg: dict) -> None:
    model = build(name, **cfg).eval()
    x, present = gappy_inputs(CHANNELS, 96)
    with torch.no_grad():
        reference = model(x, present)
        assert torch.allclose(model(replace_missing(x, present, seed=1), present), reference)
        # The control: changing observed values of any one modality does change the output.
        for m in CHANNELS:
            changed = {**x, m: x[m] + 1.0}
            assert not torch.allclose(model(changed, present)[:2], reference[:2]), m


def per_modality_models() -> list[str]:
    """Torch models with parameters of their own for each modality (e.g. one encoder each)."""
    return [
        n
        for n in TORCH_MODELS
        if any(set(p.split(".")) & set(CHANNELS) for p, _ in build(n).named_parameters())
    ]


@pytest.mark.parametrize("name", per_modality_models())
def test_a_wholly_missing_modality_has_no_say(name: str) -> None:
    model = build(name).eval()
    x, present = gappy_inputs(CHANNELS, 64)
    missing = next(iter(CHANNELS))  # wholly missing in window 2
    with torch.no_grad():
        reference = model(x, present)
        for p_name, p in model.named_parameters():
            if missing in p_name.split("."):
                p.add_(torch.randn_like(p))
        changed = model(x, present)
    assert torch.allclose(changed[2:], reference[2:])
    assert not torch.allclose(changed[:2], reference[:2])


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_initial_loss_is_about_log_n_classes(name: str, cfg: dict) -> None:
    model = build(name, n_classes=12, **cfg).train()
    x, present = inputs(CHANNELS, 64, 64)
    y = torch.randint(0, 12, (64,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = F.cross_entropy(model(x, present), y).item()
    assert abs(loss - math.log(12)) < 0.1


def first_layer(model: nn.Module, x: dict[str, Tensor], present: dict[str, Tensor]) -> nn.Module:
    """The first submodule with a weight matrix that a forward pass calls: the first layer."""
    called: list[nn.Module] = []
    hooks = [
        module.register_forward_pre_hook(lambda m, _: called.append(m))
        for name, module in model.named_modules()
        if name and any(p.ndim >= 2 for p in module.parameters(recurse=False))
    ]
    with torch.no_grad():
        model(x, present)
    for hook in hooks:
        hook.remove()
    return called[0]


# Healthy at initialisation (measured: logits std 0.02-0.13 and first-layer gradient norms
# 0.017-0.36 over the registered models). A stack whose activations vanish is far below both:
# unnormalised ReLU convolutions gave 0.006 and 4.9e-4 and barely trained.
LOGITS_STD = (0.01, 1.0)
FIRST_LAYER_GRAD = (5e-3, 10.0)


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_initial_logits_and_first_layer_gradient_have_a_healthy_scale(name: str, cfg: dict) -> None:
    model = build(name, n_classes=12, **cfg).train()
    x, present = inputs(CHANNELS, 32, 256)
    first = first_layer(model, x, present)
    y = torch.randint(0, 12, (32,), generator=torch.Generator().manual_seed(0))
    logits = model(x, present)
    F.cross_entropy(logits, y).backward()
    weights = [p for p in first.parameters(recurse=False) if p.ndim >= 2]
    grad = torch.sqrt(sum(p.grad.pow(2).sum() for p in weights if p.grad is not None)).item()
    assert LOGITS_STD[0] < logits.std().item() < LOGITS_STD[1], f"{name}: logits std"
    assert FIRST_LAYER_GRAD[0] < grad < FIRST_LAYER_GRAD[1], f"{name}: first-layer gradient"


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_memorises_one_batch_of_random_labels(name: str, cfg: dict) -> None:
    model = build(name, n_classes=4, dropout=0.0, **cfg).train()
    x, present = inputs(CHANNELS, 32, 64)
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(x, present)
        loss = F.cross_entropy(logits, y)
        if loss.item() < 0.1 and (logits.argmax(dim=1) == y).all():
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    assert (logits.argmax(dim=1) == y).all()


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_same_seed_gives_identical_outputs_and_gradients(name: str, cfg: dict) -> None:
    x, present = gappy_inputs(CHANNELS, 64)
    runs = []
    for _ in range(2):
        model = build(name, **cfg).train()
        torch.manual_seed(1)  # dropout draws from the global generator
        logits = model(x, present)
        grads = torch.autograd.grad(logits.logsumexp(dim=1).sum(), list(model.parameters()))
        runs.append((logits, grads))
    (logits_a, grads_a), (logits_b, grads_b) = runs
    assert torch.equal(logits_a, logits_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


@pytest.mark.parametrize(("name", "cfg"), CASES)
@pytest.mark.parametrize("subset", [("heart_rate",), ("imu_ankle", "heart_rate")])
def test_works_with_a_subset_of_modalities(name: str, cfg: dict, subset: tuple[str, ...]) -> None:
    channels = {m: CHANNELS[m] for m in subset}
    model = build(name, channels=channels, **cfg).train()
    x, present = gappy_inputs(channels, 64)
    logits = model(x, present)
    assert logits.shape == (4, 5)
    assert torch.isfinite(logits).all()
    logits.sum().backward()


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_unknown_config_key_is_an_error(name: str) -> None:
    with pytest.raises(TypeError, match="not_a_setting"):
        create_model(name, 5, CHANNELS, not_a_setting=1)


@pytest.mark.parametrize("name", ["lstm", "deep_conv_lstm"])
def test_an_unknown_pooling_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="pooling"):
        create_model(name, 5, CHANNELS, pooling="max")


def test_hierarchical_transformer_rejects_a_segment_not_made_of_whole_tokens() -> None:
    with pytest.raises(ValueError, match="multiple"):
        create_model("hierarchical_transformer", 5, CHANNELS, segment=30, token=4)
