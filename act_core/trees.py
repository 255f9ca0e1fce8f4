"""What a user passes as "the model", resolved to the ``torch.nn.Module`` tree hooks attach to.

``steer``, ``attach``, ``bake`` and ``TransportMap.check_model`` take a ``torch.nn.Module``
whose ``get_submodule`` resolves the map's module names. Other objects that *hold* modules (a
diffusers pipeline holds a UNet and text encoders) are resolved by an adapter: a pair
``(matches(obj) -> bool, tree(obj) -> nn.Module)`` registered with
:func:`register_tree_adapter`. The tree an adapter returns is a view whose modules are the
object's own (hooks on it are hooks on the object). The core registers none; the package face
registers the wings' adapters, which import their wing only when first used.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch

_ADAPTERS: List[Tuple[Callable[[Any], bool], Callable[[Any], torch.nn.Module]]] = []


def register_tree_adapter(matches: Callable[[Any], bool], tree: Callable[[Any], torch.nn.Module]) -> None:
    """Resolve objects for which ``matches(obj)`` is true with ``tree(obj)``."""
    _ADAPTERS.append((matches, tree))


def module_tree(model: Any) -> torch.nn.Module:
    """``model`` itself when it is a ``torch.nn.Module``, else the tree an adapter builds for it;
    TypeError naming what is accepted otherwise."""
    if isinstance(model, torch.nn.Module):
        return model
    for matches, tree in _ADAPTERS:
        if matches(model):
            return tree(model)
    raise TypeError(
        f"expected a torch.nn.Module (or a diffusers pipeline), got {type(model).__name__}: pass the model whose "
        "module names the map uses"
    )


__all__ = ["register_tree_adapter", "module_tree"]
