"""unsee: forget what a multimodal LLM recognises of a person from images, and prove it."""

from unsee import numerics as _numerics

__version__ = "0.1.0"

_numerics.pin_early()  # before torch's first operation: UNSEE_NUMERICS=portable pins its CPU kernels
