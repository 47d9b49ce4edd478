"""rpe_jax: randomized 2D positional encodings for Diffusion Transformers in JAX/Flax."""

from setuptools import find_packages, setup

# Versions verified to install together on a fresh Python 3.11 (see docs, STACK notes).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "etils[epath]>=1.15,<2",  # local and gs:// paths (rpe_jax/paths.py); also used by Orbax
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    "clu==0.0.12",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "scipy",
    "safetensors",
    "absl-py",
    # CLU's metric writers and periodic actions import TensorFlow at load time.
    "tensorflow-cpu==2.21.0",
    "tensorboard",
    "matplotlib==3.10.7",  # the metric-vs-resolution plot
]

EXTRAS_REQUIRE = {
    # Reference networks for parity tests (PyTorch DiT-style checks, diffusers VAE,
    # pytorch-fid Inception). torch 2.14.1 + torchvision 0.29.1 install together.
    "test": [
        "pytest",
        "ruff",
        "mypy==2.4.1",  # type check of rpe_jax (config in pyproject.toml; run by .ci/run)
        "torch==2.14.1",
        "torchvision==0.29.1",
        "pytorch-fid==0.3.0",
        "diffusers==0.42.1",
        # The Colab notebook, executed headless (tests/test_notebook.py).
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
    "gpu": ["jax[cuda12]==0.10.2"],
    # Orbax reaches gs:// checkpoint folders through google-cloud-storage.
    "tpu": ["jax[tpu]==0.10.2", "google-cloud-storage==3.17.1"],
}

setup(
    name="rpe_jax",
    version="0.1.0",
    description="RPE-2D: randomized 2D positional encodings for resolution generalization of DiTs",
    packages=find_packages(include=["rpe_jax", "rpe_jax.*", "configs"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
