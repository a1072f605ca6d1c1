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


def read_block(adapter: HFAdapter, block: int | None = None) -> int:
    """``block`` checked against the tower, or where None, the vision block whose output the language model
    reads, as an index into :func:`vision_blocks`.

    LLaVA reads ``vision_feature_layer`` of the tower's hidden states, where layer 0 is the patch
    embedding: layer -2 (LLaVA-1.5) is the second-to-last block, a positive layer ``k`` block ``k - 1``.
    Qwen-VL's merger reads the last block.
    """
    if block is None:
        layer = getattr(adapter.model.config, "vision_feature_layer", -1)
        if not isinstance(layer, int) or layer == 0:
            raise ConfigError(f"this model feeds its language model vision layer(s) {layer}, which no single vision "
                              "block outputs; set merge_block")
        block = layer if layer < 0 else layer - 1
    n = len(vision_blocks(adapter))
    if not -n <= block < n:
        raise ConfigError(f"merge_block {block} is not a vision block of this model, which has {n} (0 to {n - 1}, "
                          f"or -1 to -{n} from the last)")
    return block


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
        hidden = adapter._out(captured[i])  # a reference kept on the CPU hands its tokens to the model's device
        if hidden.dim() == 3:  # [images, tokens, d]
            out.append(list(hidden))
            continue
        if sizes is None:  # the patches of every image in one row, as Qwen-VL's tower runs them
            sizes = adapter.to_device(image_inputs)["image_grid_thw"].prod(-1).tolist()
        out.append(list(hidden.split(sizes)))
    return feats, out
