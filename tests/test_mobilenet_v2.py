"""Tests of the frozen MobileNetV2 blocks of nsfwjs: TF.js parity and the package reader.

The parity tests need the npm package: `RPE_JAX_NSFWJS` (the .tgz or its unpacked folder, set by
`.ci/run`), else `~/.cache/rpe_jax/nsfwjs/nsfwjs-4.3.0.tgz`; they skip without it, except under
`CI=true` or with `RPE_JAX_NSFWJS` set, where a missing package fails. The live TF.js test also
needs `RPE_JAX_TFJS_MODULES`, a folder whose node_modules/ holds @tensorflow/tfjs and nsfwjs.
"""

import base64
import json
import os
import pathlib
import shutil
import subprocess
import tarfile

import jax
import numpy as np
import pytest
import scipy.ndimage
from flax import nnx

from rpe_jax import feature_extractor
from rpe_jax.models import mobilenet_v2

REFERENCE_DIR = pathlib.Path(__file__).parent / "reference"
REFERENCE_SCRIPT = REFERENCE_DIR / "mobilenet_v2_tfjs.js"
REFERENCE = REFERENCE_DIR / "mobilenet_v2_tfjs.json"
DEFAULT_PACKAGE = pathlib.Path.home() / ".cache" / "rpe_jax" / "nsfwjs" / "nsfwjs-4.3.0.tgz"
ATOL = 1e-4  # absolute, on features whose magnitudes reach ~10


def _package_path() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("RPE_JAX_NSFWJS", "") or DEFAULT_PACKAGE)
    if not path.exists():
        required = os.environ.get("CI", "").lower() == "true" or "RPE_JAX_NSFWJS" in os.environ
        message = f"nsfwjs package not found at {path}; run `npm pack nsfwjs@4.3.0` and set RPE_JAX_NSFWJS"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def model() -> mobilenet_v2.MobileNetV2Features:
    return mobilenet_v2.load_mobilenet_v2(_package_path())


def _reference_image(index: int, size: int) -> np.ndarray:
    """The integer formula `pixel` of mobilenet_v2_tfjs.js, divided by 255: [size, size, 3]."""
    i, j, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    return (((3 * i * (index + 1) + 5 * j + 40 * c + ((i * j * (index + 7)) % 53)) % 256) / 255).astype(
        np.float32
    )


def _assert_matches(model, reference: dict) -> None:
    forward = nnx.jit(lambda model, x: (model(x), model.endpoints(x)[mobilenet_v2.SPATIAL_LAYER]))
    for n, image in enumerate(reference["images"]):
        features, block = forward(model, _reference_image(image["index"], image["size"])[None])
        np.testing.assert_allclose(features.pool[0], reference["pool"][n], rtol=0, atol=ATOL)
        np.testing.assert_allclose(features.spatial[0], reference["spatial"][n], rtol=0, atol=ATOL)
        np.testing.assert_allclose(block[0].mean((0, 1)), reference["spatial_mean"][n], rtol=0, atol=ATOL)


def test_matches_tfjs_reference(model):
    reference = json.loads(REFERENCE.read_text())
    assert reference["pool_layer"] == mobilenet_v2.POOL_LAYER
    assert reference["spatial_layer"] == mobilenet_v2.SPATIAL_LAYER
    assert {image["size"] for image in reference["images"]} >= {32, 64, mobilenet_v2.INPUT_SIZE}
    _assert_matches(model, reference)


def test_feature_extractor_shapes_and_batching():
    features = feature_extractor.load("mobilenet_v2", _package_path(), batch_size=2)
    images = np.stack([_reference_image(k, 32) for k in range(3)])
    out = features(images)
    assert out.pool.shape == (3, mobilenet_v2.POOL_FEATURES)
    assert out.logits.shape == (3, 0)
    assert out.spatial.shape == (3, mobilenet_v2.SPATIAL_FEATURES)
    alone = features(images[2:])  # the last image was padded into a batch of 2 above
    np.testing.assert_allclose(out.pool[2], alone.pool[0], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_live_tfjs_reference(model, tmp_path):
    modules = os.environ.get("RPE_JAX_TFJS_MODULES", "")
    if (
        not shutil.which("node")
        or not (pathlib.Path(modules) / "node_modules" / "@tensorflow" / "tfjs").is_dir()
    ):
        pytest.skip("needs node and RPE_JAX_TFJS_MODULES with @tensorflow/tfjs and nsfwjs installed")
    out = tmp_path / "reference.json"
    subprocess.run(
        ["node", str(REFERENCE_SCRIPT), modules, str(out)], check=True, capture_output=True, timeout=300
    )
    _assert_matches(model, json.loads(out.read_text()))


def test_resize_align_corners_matches_scipy():
    x = np.random.default_rng(0).random((1, 5, 7, 2)).astype(np.float32)
    ours = np.asarray(mobilenet_v2.resize_align_corners(x, 12))
    # scipy's zoom (grid_mode=False, order 1) maps the corner pixels onto each other, as alignCorners.
    expected = scipy.ndimage.zoom(x[0], (12 / 5, 12 / 7, 1), order=1, grid_mode=False)
    np.testing.assert_allclose(ours[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("stride, pad", [(1, ((1, 1), (1, 1))), (2, ((0, 1), (0, 1)))])
def test_depthwise_conv_matches_grouped_convolution(stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 10, 5)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 5)).astype(np.float32)
    expected = jax.lax.conv_general_dilated(
        x,
        kernel[:, :, None, :],
        (stride, stride),
        pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=5,
        precision=jax.lax.Precision.HIGHEST,
    )
    ours = mobilenet_v2.depthwise_conv(x, kernel, stride, pad)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_parse_js_literal():
    text = 'x={a:[1,-.5,2e-3,-0],"b":{c:!0,d:!1,e:null},f:"s\\"q"} rest'
    value, end = mobilenet_v2.parse_js_literal(text, 2)
    assert value == {"a": [1, -0.5, 0.002, 0], "b": {"c": True, "d": False, "e": None}, "f": 's"q'}
    assert text[end:] == " rest"
    with pytest.raises(ValueError, match="Unexpected JS name 'undefined'"):
        mobilenet_v2.parse_js_literal("{a:undefined}")


# A fake package: every weight the network needs, uint8-quantised, in one browserify-wrapped shard.
_WRAP = "!function(e){{}}({{1:[function(e,a,n){{a.exports={}}},{{}}]}},{{}},[1])(1)}});"


def _fake_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {}
    for conv in mobilenet_v2.MobileNetV2Features().conv_bns():
        shapes[conv.kernel_key] = conv.kernel.shape
        for field in ("gamma", "beta", "moving_mean", "moving_variance"):
            shapes[f"{conv.bn_name}/{field}"] = conv.gamma.shape
    return {name: rng.integers(0, 256, shape, dtype=np.uint8) for name, shape in shapes.items()}


def _fake_layers(weights: dict[str, np.ndarray]) -> list[dict]:
    """Frozen Keras layer entries of the model.json topology for the layers `weights` name."""
    names = {name.split("/")[0]: name.split("/")[1] for name in weights}
    kinds = {"kernel": "Conv2D", "depthwise_kernel": "DepthwiseConv2D"}
    strided = ("Conv1", "block_1_depthwise", "block_3_depthwise", "block_6_depthwise")
    return [
        {
            "name": name,
            "class_name": kinds.get(field, "BatchNormalization"),
            "config": {"trainable": False, "strides": [2, 2] if name in strided else [1, 1], "epsilon": 1e-3},
        }
        for name, field in names.items()
    ]


def _write_fake_package(root: pathlib.Path, weights: dict, layers: list | None = None) -> pathlib.Path:
    model_dir = root / "package" / "dist" / "models" / "mobilenet_v2"
    model_dir.mkdir(parents=True)
    layers = _fake_layers(weights) if layers is None else layers
    specs = [
        {
            "name": n,
            "shape": list(w.shape),
            "dtype": "float32",
            "quantization": {"min": -1.5, "scale": 0.25, "dtype": "uint8"},
        }
        for n, w in weights.items()
    ]
    topology = {"model_config": {"config": {"layers": layers}}}
    model_json = {
        "modelTopology": topology,
        "weightsManifest": [{"paths": ["group1-shard1of1"], "weights": specs}],
    }
    shard = base64.b64encode(b"".join(w.tobytes() for w in weights.values())).decode()
    (model_dir / "model.min.js").write_text(_WRAP.format(json.dumps(model_json)))
    (model_dir / "group1-shard1of1.min.js").write_text(_WRAP.format(json.dumps(shard)))
    return root


def test_fake_package_dequantises_from_folder_and_tgz(tmp_path):
    weights = _fake_weights()
    folder = _write_fake_package(tmp_path / "unpacked", weights)
    archive = tmp_path / "nsfwjs.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "package", arcname="package")
    for path in (folder, folder / "package", archive):
        model = mobilenet_v2.load_mobilenet_v2(path)
        expected = weights["block_10_project/kernel"] * 0.25 - 1.5
        np.testing.assert_array_equal(model.blocks[10].project.kernel[...], expected)
        np.testing.assert_array_equal(model.stem.var[...], weights["bn_Conv1/moving_variance"] * 0.25 - 1.5)


def test_missing_weight_is_named(tmp_path):
    weights = _fake_weights()
    del weights["block_4_expand_BN/moving_mean"]
    with pytest.raises(ValueError, match="'block_4_expand_BN/moving_mean' is missing"):
        mobilenet_v2.load_mobilenet_v2(_write_fake_package(tmp_path, weights))


def test_misshaped_weight_is_named(tmp_path):
    weights = _fake_weights()
    weights["block_2_depthwise/depthwise_kernel"] = weights["block_2_depthwise/depthwise_kernel"][:, :, :10]
    with pytest.raises(ValueError, match=r"'block_2_depthwise/depthwise_kernel' has shape \(3, 3, 10, 1\)"):
        mobilenet_v2.load_mobilenet_v2(_write_fake_package(tmp_path, weights))


def test_trainable_layer_is_rejected(tmp_path):
    weights = _fake_weights()
    layers = _fake_layers(weights)
    next(layer for layer in layers if layer["name"] == "block_10_project_BN")["config"]["trainable"] = True
    with pytest.raises(ValueError, match="'block_10_project_BN' is trainable"):
        mobilenet_v2.load_mobilenet_v2(_write_fake_package(tmp_path, weights, layers))


def test_missing_or_short_shard(tmp_path):
    folder = _write_fake_package(tmp_path, _fake_weights())
    shard = folder / "package/dist/models/mobilenet_v2/group1-shard1of1.min.js"
    shard.write_text(_WRAP.format(json.dumps(base64.b64encode(b"\0" * 100).decode())))
    with pytest.raises(ValueError, match="the shards \\['group1-shard1of1'\\] end early"):
        mobilenet_v2.read_package(folder)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="group1-shard1of1.min.js is missing"):
        mobilenet_v2.read_package(folder)


def test_missing_path_says_npm_pack(tmp_path):
    with pytest.raises(FileNotFoundError, match="npm pack nsfwjs@4.3.0"):
        feature_extractor.load("mobilenet_v2", tmp_path / "absent.tgz")
    with pytest.raises(ValueError, match="npm pack nsfwjs@4.3.0"):
        feature_extractor.load("mobilenet_v2", "")
