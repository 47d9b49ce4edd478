"""Tests for rpe_jax/models/inception.py against pytorch-fid (random weights, offline)."""

import pathlib
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from pytorch_fid import inception as pytorch_fid

from rpe_jax.models import inception

BATCH = 2
IMAGE_SIZE = 64  # not 299, so the resize is exercised


def _random_pytorch_fid() -> tuple[torch.nn.Module, torch.nn.Module]:
    """Returns pytorch-fid's pool3 `InceptionV3` and the `fid_inception_v3()` inside it.

    Offline: the weight download is patched to return the state dict of the FID network
    being built, so it keeps its random initialisation.
    """
    built = []
    make_inception = pytorch_fid._inception_v3

    def recording_inception_v3(*args, **kwargs):
        built.append(make_inception(*args, **kwargs))
        return built[-1]

    with (
        mock.patch.object(pytorch_fid, "_inception_v3", recording_inception_v3),
        mock.patch.object(pytorch_fid, "load_state_dict_from_url", lambda *a, **k: built[-1].state_dict()),
    ):
        wrapper = pytorch_fid.InceptionV3([pytorch_fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return wrapper, built[-1]


@torch.no_grad()
def _randomise_batch_norm(network: torch.nn.Module, generator: torch.Generator) -> None:
    """Gives every batch-norm a random affine map and non-trivial running statistics.

    The statistics are measured on random images once the affine maps are set, then the
    variances are scaled up by U(1, 2): activations keep a sane scale through the 94 layers
    and the network does not amplify float32 rounding (with the measured variances alone,
    a 3e-6 change of the input moves pool_3 by 8e-4 of its scale).
    """
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator))
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics
    small = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    network.train()
    network(F.interpolate(small, size=(299, 299), mode="bilinear") * 2 - 1)
    network.eval()
    for norm in norms:
        norm.running_var.mul_(1.0 + torch.rand(norm.running_var.shape, generator=generator))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random pytorch-fid network's checkpoint, test images and pytorch-fid's features."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    wrapper, network = _random_pytorch_fid()
    _randomise_batch_norm(network, generator)
    path = tmp_path_factory.mktemp("inception") / "fid_inception_random.pth"
    torch.save(network.state_dict(), path)

    images = torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    captured = {}
    hook = network.Mixed_6d.branch1x1.register_forward_hook(
        lambda module, inputs, output: captured.update(mixed_6_conv=output.clone())
    )
    with torch.no_grad():
        (pool,) = wrapper.eval()(images)
        pool = pool.flatten(1)  # [B, 2048]
        logits = pool @ network.fc.weight.T  # [B, 1008], no bias: the IS convention
    hook.remove()
    # guided-diffusion flattens mixed_6/conv[..., :7] from NHWC: (row, col, channel) order.
    spatial = captured["mixed_6_conv"][:, :7].permute(0, 2, 3, 1).flatten(1)  # [B, 2023]
    return {
        "path": path,
        "images": images.permute(0, 2, 3, 1).numpy(),  # [B, H, W, 3]
        "pool": pool.numpy(),
        "logits": logits.numpy(),
        "spatial": spatial.numpy(),
    }


@pytest.fixture(scope="module")
def model(reference):
    return inception.load_fid_inception(reference["path"])


@pytest.fixture(scope="module")
def features(model, reference):
    return nnx.jit(lambda m, x: m(x))(model, reference["images"])


@pytest.mark.parametrize("name, width", [("pool", 2048), ("logits", 1008), ("spatial", 17 * 17 * 7)])
def test_features_match_pytorch_fid(features, reference, name, width):
    ours, theirs = np.asarray(getattr(features, name)), reference[name]
    assert ours.shape == theirs.shape == (BATCH, width)
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
    # The features must depend on the image, or the comparison would prove little.
    assert np.abs(theirs[0] - theirs[1]).max() > 1e-2 * scale


@pytest.mark.parametrize("in_size", [(64, 64), (512, 300), (299, 299), (17, 400)])
def test_resize_matches_torch_interpolate(in_size):
    images = torch.rand(2, 3, *in_size, generator=torch.Generator().manual_seed(1))
    # torch in float64 gives the formula's exact values; its float32 kernel is off by up to
    # ~2e-5 (single-precision source coordinates), ours by ~1e-7.
    theirs = F.interpolate(images.double(), size=(299, 299), mode="bilinear", align_corners=False)
    ours = inception.resize_bilinear(images.permute(0, 2, 3, 1).numpy(), (299, 299))
    np.testing.assert_allclose(np.asarray(ours), theirs.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def _tricky_state_dict() -> dict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "transposed": base.t(),  # non-contiguous strides
        "offset_view": base[1:3, 2:],  # storage offset, shares base's storage
        "base": base,
        "long_scalar": torch.tensor(7, dtype=torch.int64),
        "half": torch.linspace(-1, 1, 5, dtype=torch.float16),
        "double": torch.randn(2, 2, 2, dtype=torch.float64).permute(2, 0, 1),
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.linspace(0, 1, 4)),
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_matches_torch_load(tmp_path, zip_format):
    path = tmp_path / "tricky.pth"
    torch.save(_tricky_state_dict(), path, _use_new_zipfile_serialization=zip_format)
    ours, theirs = inception.read_torch_state_dict(path), torch.load(path)
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.detach().numpy().dtype, key
        np.testing.assert_array_equal(ours[key], tensor.detach().numpy(), err_msg=key)


def test_reader_matches_torch_load_on_fid_checkpoint(reference):
    ours = inception.read_torch_state_dict(reference["path"])
    theirs = torch.load(reference["path"])
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)


def test_loader_lists_missing_unexpected_and_misshapen_keys(reference, tmp_path):
    state = torch.load(reference["path"])
    del state["Mixed_6d.branch1x1.bn.running_var"]
    state["Mixed_8a.conv.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "mismatched.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        inception.load_fid_inception(path)
    message = str(error.value)
    assert str(path) in message
    assert "missing key Mixed_6d.branch1x1.bn.running_var" in message
    assert "unexpected key Mixed_8a.conv.weight" in message
    assert "fc.weight: shape (2048, 1000) (Flax layout), expected (2048, 1008)" in message


def test_loads_legacy_checkpoint_without_batch_counters(reference, model, tmp_path):
    """The 2019 FID file predates torch's zip format; old state dicts lack num_batches_tracked."""
    state = {k: v for k, v in torch.load(reference["path"]).items() if "num_batches" not in k}
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = nnx.to_flat_state(nnx.state(inception.load_fid_inception(path)))
    for (key, ours), (_, theirs) in zip(loaded, nnx.to_flat_state(nnx.state(model)), strict=True):
        np.testing.assert_array_equal(ours.get_value(), theirs.get_value(), err_msg=str(key))


def _write_first_half(source: pathlib.Path, target: pathlib.Path) -> None:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])


@pytest.mark.parametrize("kind", ["garbage", "truncated_zip", "truncated_legacy"])
def test_corrupted_file_raises_value_error_naming_it(reference, tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated_zip":
        _write_first_half(reference["path"], path)
    else:
        legacy = tmp_path / "legacy.pth"
        torch.save(torch.load(reference["path"]), legacy, _use_new_zipfile_serialization=False)
        _write_first_half(legacy, path)
    with pytest.raises(ValueError, match="not a readable torch state dict") as error:
        inception.load_fid_inception(path)
    assert str(path) in str(error.value)


def test_reader_refuses_pickled_code(tmp_path):
    path = tmp_path / "module.pth"
    torch.save({"layer": torch.nn.Linear(2, 2)}, path)  # pickles torch.nn classes
    with pytest.raises(ValueError, match="torch.nn.modules.linear.Linear is not allowed"):
        inception.read_torch_state_dict(path)


def test_missing_file_names_path_and_download_url(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError) as error:
        inception.load_fid_inception(path)
    assert str(path) in str(error.value)
    assert inception.FID_WEIGHTS_URL in str(error.value)


def test_rejects_images_that_are_not_rgb(model):
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        model(np.zeros((1, 3, 64, 64), np.float32))
