"""rpe_jax: randomized 2D positional encodings (RPE-2D) for Diffusion Transformers."""
