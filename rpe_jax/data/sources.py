"""Random-access data sources, one registry: name -> builder.

A builder takes (data config, split, (H, W)) and returns a Grain-compatible
random-access source (`__len__`, `__getitem__`) yielding
{"image": [H, W, C] float32 in [0, 1], "label": int} — or, for latent sources,
{"latent": [h, w, 4] float32, "label": int}.
"""

from collections.abc import Callable

import ml_collections

from rpe_jax.data import procedural


def _procedural(config: ml_collections.ConfigDict, split: str, resolution: tuple[int, int]):
    size = config.train_size if split == "train" else config.eval_size
    return procedural.ProceduralSource(
        size, resolution, split=split, seed=config.seed, num_classes=config.num_classes
    )


SOURCES: dict[str, Callable] = {"procedural": _procedural}
