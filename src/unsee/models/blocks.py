"""The vision encoder's blocks, and their outputs taken from the same forward pass as the visual tokens.

A loss or a probe on the projector output alone cannot say whether the tower below still
holds what the projector hides; these read the tower block by block, for every architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import BatchFeature

from unsee.errors import ConfigError
from unsee.models.base import HFAdapter


def vision_blocks(adapter: HFAdapter) -> list[nn.Module]:
    """The vision encoder's transformer blocks in order: the block list of the ``vision`` group."""
    for name, mod in adapter.model.named_modules():
        if isinstance(mod, nn.ModuleList) and adapter.group_of(name + ".") == "vision":
            return list(mod)
    raise ConfigError(f"found no list of vision blocks in {adapter.source or type(adapter.model).__name__}")


def features_and_hidden(adapter: HFAdapter, image_inputs: BatchFeature,
                        blocks: Sequence[int]) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """``visual_features`` and, from the same forward pass, each image's tokens after each of
    ``blocks``: one list of per-image ``[tokens, d]`` tensors per block, in the order asked."""
    if not blocks:  # no hooks, and no walk over the modules to find them
        return adapter.visual_features(image_inputs), []
    chosen = vision_blocks(adapter)
    captured: dict[int, torch.Tensor] = {}

    def keep(i: int) -> Callable[..., None]:
        return lambda _m, _i, out: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)

    handles = [chosen[b].register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
    try:
        feats = adapter.visual_features(image_inputs)
    finally:
        for h in handles:
            h.remove()
    sizes = None
    out = []
    for i in range(len(blocks)):
        hidden = captured[i]
        if hidden.dim() == 3:  # [images, tokens, d]
            out.append(list(hidden))
            continue
        if sizes is None:  # the patches of every image in one row, as Qwen-VL's tower runs them
            sizes = adapter.to_device(image_inputs)["image_grid_thw"].prod(-1).tolist()
        out.append(list(hidden.split(sizes)))
    return feats, out
