"""Config class paths (``class_path: package.module.Name``) checked against the classes they must name."""

from importlib import import_module


def names_subclass(class_path: str | None, base: type) -> bool:
    """Whether ``class_path`` imports to ``base`` or a subclass of it (False for a path that imports nothing)."""
    module, _, name = (class_path or "").rpartition(".")
    cls = getattr(import_module(module), name, None) if module else None
    return isinstance(cls, type) and issubclass(cls, base)
