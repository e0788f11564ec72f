"""Hub-format export of every stage's model."""

from .export import save_for_hub

__all__ = ["save_for_hub"]
