"""The model registry, our ResNet against torchvision's, and weight loading (CPU only)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from pipeline.errors import CheckpointError, ConfigError
from pipeline.workstation.models import MODELS, build_model, count_parameters, model_options
from pipeline.workstation.models.resnet import BasicBlock, Bottleneck, PadShortcut, make_stage
from pipeline.workstation.models.weights import load_weights

# The paper's Table 6 figures (option A shortcuts, 10 classes).
PAPER_PARAMS = {"resnet20": 0.27e6, "resnet56": 0.85e6, "resnet110": 1.7e6}
# torchvision's documented figures for 1000 classes.
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Inputs here are tiny, so intra-op threads only add sync cost; on a busy 2-core
    machine (a training run beside the tests) they made a resnet152 forward 70x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _input(family: str, n: int = 2) -> torch.Tensor:
    size = 32 if family == "cifar" else 64
    return torch.randn(n, 3, size, size)  # (N, 3, H, W)


def _torchvision(name: str, num_classes: int = 1000) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


# ------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_cifar_parameter_counts_match_paper(name: str) -> None:
    count = count_parameters(build_model(name, 10))
    assert count == pytest.approx(PAPER_PARAMS[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_parameter_counts_match_torchvision(name: str) -> None:
    assert count_parameters(build_model(name, 1000)) == TORCHVISION_PARAMS[name]


def test_option_b_adds_projection_parameters() -> None:
    a = count_parameters(build_model("resnet20", 10, shortcut="A"))
    b = count_parameters(build_model("resnet20", 10, shortcut="B"))
    # Two projections: 16->32 and 32->64, each a 1x1 conv plus BN weight and bias.
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


# ---------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_and_outputs_match(name: str) -> None:
    theirs = _torchvision(name).eval()
    ours = build_model(name, 1000).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = _input("imagenet", n=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_torchvision_parity_survives_nontrivial_bn_statistics() -> None:
    # Fresh BN is the identity in eval mode; random statistics make the comparison bite.
    theirs = _torchvision("resnet18")
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    ours = build_model("resnet18", 1000)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = _input("imagenet", n=1)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=1e-5, rtol=0)


def test_initialisation_matches_torchvision() -> None:
    ours = build_model("resnet50", 10, zero_init_residual=True)
    bns = [m.bn3 for m in ours.modules() if isinstance(m, Bottleneck)]
    assert len(bns) == 16 and all(bool((bn.weight == 0).all()) for bn in bns)
    assert bool((ours.bn1.weight == 1).all()) and bool((ours.bn1.bias == 0).all())
    # kaiming_normal_ fan_out: std = sqrt(2 / (out_channels * k * k)).
    std = ours.conv1.weight.std().item()
    assert std == pytest.approx((2 / (64 * 7 * 7)) ** 0.5, rel=0.1)


# ------------------------------------------------------------------------ registry


def test_registry_holds_every_paper_depth_and_its_plain_twin() -> None:
    depths = [20, 32, 44, 56, 110, 18, 34, 50, 101, 152]
    expected = {f"{p}{d}" for p in ("resnet", "plain") for d in depths}
    assert set(MODELS) == expected
    assert all(spec.plain == name.startswith("plain") for name, spec in MODELS.items())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_classifies(name: str) -> None:
    spec = MODELS[name]
    model = build_model(name, 7).eval()
    with torch.no_grad():
        out = model(_input(spec.family, n=2))
    assert out.shape == (2, 7)
    assert isinstance(model.layer1[0], spec.block)


@pytest.mark.parametrize("name", [n for n in sorted(MODELS) if n.startswith("plain")])
def test_plain_twins_have_no_shortcuts(name: str) -> None:
    model = build_model(name, 10)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(b.plain and b.downsample is None for b in blocks)
    assert not any("downsample" in key for key in model.state_dict())


def test_plain_twin_parameter_counts() -> None:
    # Option A adds no parameters, so a CIFAR residual net equals its plain twin; option B
    # (ImageNet, or CIFAR with shortcut="B") adds projections that the twin lacks.
    assert count_parameters(build_model("plain56", 10)) == \
        count_parameters(build_model("resnet56", 10))
    assert count_parameters(build_model("plain56", 10, shortcut="B")) < \
        count_parameters(build_model("resnet56", 10, shortcut="B"))
    assert count_parameters(build_model("plain50", 10)) < \
        count_parameters(build_model("resnet50", 10))


@pytest.mark.parametrize("block_type", [BasicBlock, Bottleneck])
def test_plain_block_is_its_body_without_addition(block_type: type[nn.Module]) -> None:
    torch.manual_seed(0)
    plain = block_type(64, 16 if block_type is Bottleneck else 64, plain=True).eval()
    residual = block_type(64, 16 if block_type is Bottleneck else 64).eval()
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), torch.relu(plain.body(x)))
        torch.testing.assert_close(residual(x), torch.relu(plain.body(x) + x))


def test_imagenet_stages_downsample_with_projections() -> None:
    stage = make_stage(Bottleneck, 256, 128, 4, 2, "B", plain=False)
    first = stage[0]
    assert isinstance(first.downsample, nn.Sequential)
    assert first.conv2.stride == (2, 2) and first.conv1.stride == (1, 1)  # v1.5
    assert all(b.downsample is None for b in stage[1:])


# ----------------------------------------------------------------- option A shortcut


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    shortcut = PadShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and shortcut.state_dict() == {}
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert bool((out[:, 16:] == 0).all())


def test_cifar_residual_nets_use_option_a_by_default() -> None:
    model = build_model("resnet20", 10)
    assert isinstance(model.layer2[0].downsample, PadShortcut)
    assert isinstance(build_model("resnet20", 10, shortcut="B").layer2[0].downsample,
                      nn.Sequential)


# --------------------------------------------------------------------------- errors


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet19'.*resnet18"):
        build_model("resnet19", 10)


@pytest.mark.parametrize("name, options, match", [
    ("resnet18", {"shortcut": "A"}, "unknown option.*shortcut.*zero_init_residual"),
    ("resnet20", {"widht": 32}, "unknown option.*widht.*width"),
    ("resnet20", {"shortcut": "C"}, "shortcut: expected one of A, B, got 'C'"),
    ("resnet20", {"width": 0}, "width: expected an integer >= 1, got 0"),
    ("resnet20", {"zero_init_residual": "yes"}, "zero_init_residual: expected a bool"),
    ("plain20", {"zero_init_residual": True}, "zero_init_residual: expected False"),
])
def test_bad_options_raise_config_error(name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, 10, **options)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_class_count_raises_config_error(num_classes: object) -> None:
    with pytest.raises(ConfigError, match="num_classes: expected an integer >= 1"):
        build_model("resnet20", num_classes)  # type: ignore[arg-type]


def test_model_options_by_family() -> None:
    assert model_options("resnet56") == ("shortcut", "width", "zero_init_residual")
    assert model_options("plain152") == ("zero_init_residual",)


# ----------------------------------------------------------------------- load_weights


def test_load_weights_replaces_head_for_other_class_count(tmp_path: Path) -> None:
    path = tmp_path / "resnet18-imagenet.pth"
    source = _torchvision("resnet18").state_dict()
    torch.save(source, path)
    model = build_model("resnet18", 10)
    fresh_fc = {k: v.clone() for k, v in model.fc.state_dict().items()}
    replaced = load_weights(model, path)
    assert replaced == ["fc.weight", "fc.bias"]
    loaded = model.state_dict()
    for key, value in source.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert torch.equal(model.fc.weight, fresh_fc["weight"])
    assert torch.equal(model.fc.bias, fresh_fc["bias"])


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_load_weights_accepts_wrapped_checkpoints(tmp_path: Path, wrapper: str) -> None:
    source = build_model("resnet20", 10)
    path = tmp_path / "ckpt.pt"
    torch.save({wrapper: source.state_dict(), "arch": "resnet20", "epoch": 3}, path)
    target = build_model("resnet20", 10)
    assert load_weights(target, path) == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_weights_tolerates_files_without_bn_counters(tmp_path: Path) -> None:
    # torchvision's 2017 ImageNet files predate BatchNorm's num_batches_tracked.
    state = {k: v for k, v in _torchvision("resnet18").state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    assert load_weights(build_model("resnet18", 1000), tmp_path / "old.pth") == []


class _NotWeights:
    """A custom class: pickling it needs code, which weights_only loading refuses."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_load_weights_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save(_NotWeights(), path)
    with pytest.raises(CheckpointError, match="evil.pt: not a state dict.*_NotWeights"):
        load_weights(build_model("resnet20", 10), path)


@pytest.mark.parametrize("content, match", [
    (b"", r"not loadable as a weights file \(EOFError\)"),
    (b"definitely not a torch file", "not a state dict"),
])
def test_load_weights_refuses_corrupt_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"bad.pt: {match}"):
        load_weights(build_model("resnet20", 10), path)


def test_load_weights_refuses_non_state_dicts(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "arch": "resnet20"}, path)
    with pytest.raises(CheckpointError, match="meta.pt: not a state dict.*epoch, arch"):
        load_weights(build_model("resnet20", 10), path)


def test_load_weights_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt: no such weights file"):
        load_weights(build_model("resnet20", 10), tmp_path / "nope.pt")


def test_load_weights_refuses_other_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20", 10).state_dict(), path)
    model = build_model("resnet18", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"resnet20.pt: does not fit.*missing key\(s\)"):
        load_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_weights_refuses_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet56.pt"
    torch.save(build_model("resnet56", 10).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): layer1\.3\."):
        load_weights(build_model("resnet20", 10), path)


def test_load_weights_refuses_shape_mismatch_outside_head(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(build_model("resnet20", 10, width=32).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"wide.pt: .*shape mismatch.*conv1\.weight"):
        load_weights(build_model("resnet20", 10), path)
