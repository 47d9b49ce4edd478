"""Every config loads and validates; each invalid value raises its clear error."""

import glob
import importlib
import os

import pytest

from configs import demo, imagenet256
from rpe_jax import config_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if "__init__" not in p
)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_loads_and_validates(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    config_utils.validate(config, device_count=8)
    assert config_utils.train_grid(config)[0] <= config_utils.max_positions(config)[0]


def test_paper_settings():
    config = imagenet256.get_config()
    assert config_utils.train_grid(config) == (16, 16)
    assert config_utils.max_positions(config) == (32, 32)
    assert [config_utils.token_grid(config, r) for r in config_utils.sample_resolutions(config)] == [
        (8, 8),
        (16, 16),
        (24, 24),
        (32, 32),
    ]
    config.sample.resolutions = ("256x512",)
    assert config_utils.token_grid(config, config_utils.sample_resolutions(config)[0]) == (16, 32)


@pytest.mark.parametrize(
    "field, value, device_count, message",
    [
        (
            "data.resolution",
            260,
            None,
            r"Resolution 260x260 is not divisible by 16, the latent \(8 x patch\)",
        ),
        ("sample.resolutions", (1024,), None, r"1024x1024 with method 'rpe2d'.*\(64, 64\).*\(32, 32\)"),
        ("positions.train_rule", "random", None, r"positions.train_rule 'random'.*\['grid', 'rpe2d'\]"),
        ("sample.methods", ("rpe2d", "ntk_pro3"), None, r"'ntk_pro3'; choose one of.*'ntk_pro1'"),
        ("objective.time_sampler", "beta", None, r"'beta'; choose one of \['logit_normal', 'uniform'\]"),
        ("train.batch_size", 12, 8, r"batch_size 12 .* does not split over 8 devices.*multiple of 8"),
        ("mesh.shape", (3, -1), 8, r"\(3, -1\) does not fit 8 devices"),
        ("data.latent_factors", (1.0, 3.0), None, r"latent_factors \(1.0, 3.0\) must be within \[1, 2\]"),
        ("model.variant", "DiT-XXL/2", None, r"Unknown DiT variant 'DiT-XXL/2'"),
        ("model.dtype", "float16", None, r"model.dtype 'float16'.*bfloat16"),
        (
            "data.procedural_style",
            "noisy",
            None,
            r"procedural_style 'noisy'; choose one of \['detailed', 'smooth'\]",
        ),
        ("train.log_every", 0, None, r"train.log_every must be a positive number of steps, got 0"),
        (
            "train.checkpoint_every",
            -5,
            None,
            r"train.checkpoint_every must be a positive number of steps, got -5",
        ),
        ("train.sample_every", -1, None, r"train.sample_every must be >= 0 \(0: only at the end\), got -1"),
    ],
)
def test_invalid_values_raise_clear_errors(field, value, device_count, message):
    config = imagenet256.get_config()
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ValueError, match=message):
        config_utils.validate(config, device_count)


def test_pixel_resolution_must_be_divisible_by_the_patch():
    config = demo.get_config()
    config.data.max_resize_factor = 2.5
    with pytest.raises(ValueError, match=r"max_resize_factor 2.5 must be within \[1, 2\]"):
        config_utils.validate(config)
    config.data.max_resize_factor = 2.0
    config.data.resolution = 33
    with pytest.raises(ValueError, match=r"33x33 is not divisible by 2, the pixel \(patch\)"):
        config_utils.validate(config)
