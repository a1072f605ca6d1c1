"""unsee: forget what a multimodal LLM recognises of a person from images, and prove it."""

__version__ = "0.1.0"
