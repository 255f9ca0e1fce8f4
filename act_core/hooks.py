"""Forward hooks: collect pooled activations, and steer module outputs with a TransportMap.

Both kinds are registered with ``register_forward_hook`` on any ``torch.nn.Module`` and
are always removed: on ``remove()``, on leaving the ``with`` block, and when an exception
passes through it. After removal the model is exactly as before (no state is touched).
Attaching and removing are all-or-nothing under any exception (an asynchronous
``KeyboardInterrupt`` included), one model object is steered by one thread at a time, and a
copy or pickle of a steered model carries no hook: see :mod:`act_core.hookguard`.

Each steered module's output is checked against the map at the first forward of every new
(strength, dtype, device, rank) before it is changed (:func:`act_core.mapfile.output_problem`:
tuple index, unit axis and width, layout vs rank and vs the module's unit axis), so a map
that does not fit stops with a MapFileError instead of steering the wrong axis.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from .fold import effective_support
from .fused_norms import FusedNorm, fusible
from .hookguard import ForwardOverride as _ForwardOverride
from .hookguard import GuardedHooks, GuardedOwner, mark
from .mapfile import Index, MapFileError, TransportMap, find_module, output_problem, tree_index
from .pooling import POOLINGS, pool
from .transport import normalize_support
from .trees import module_tree


class StopForward(Exception):
    """Raised by a collector after the last hooked module, to end a forward pass early."""


def _pick(output: Any, index: Index) -> Any:
    """The steered tensor of a module output: the output itself, element ``index`` of a tuple
    (element 0 for None), or, for a tuple ``index``, those elements joined along dim 1 (one
    token sequence, e.g. the text and image halves a block returns separately). None when
    there is none (see output_problem)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        if isinstance(index, tuple):
            if output_problem("", None, output, None, "tokens", index):
                return None
            return torch.cat([output[i] for i in index], dim=1)
        k = 0 if index is None else index
        return output[k] if k < len(output) else None
    return None


def _picked(output: Any, index: Index, name: str, module, units: int, layout: str) -> torch.Tensor:
    x = _pick(output, index)
    if not isinstance(x, torch.Tensor):
        problem = output_problem(name, module, output, units, layout, index)
        raise MapFileError(f"{problem or f'module {name!r}: its output holds no tensor to steer'}; nothing was steered")
    return x


def _replace(output: Any, index: Index, value: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return value
    items = list(output)
    if isinstance(index, tuple):  # split the joined sequence back into its elements
        parts = value.split([output[i].shape[1] for i in index], dim=1)
        for i, part in zip(index, parts):
            items[i] = part
    else:
        items[0 if index is None else index] = value
    if isinstance(output, list):
        return items
    if hasattr(output, "_fields"):  # namedtuple
        return type(output)(*items)
    return tuple(items)


def _owns(x: torch.Tensor, args) -> bool:
    """True when writing into ``x`` in place cannot change anything but this output:
    no autograd, not a view, not one of the module's inputs (e.g. an Identity or a layer
    that returns its input after ``x +=``)."""
    if x._base is not None or (x.requires_grad and torch.is_grad_enabled()):
        return False
    ptr = x.data_ptr()
    return not any(isinstance(a, torch.Tensor) and a.data_ptr() == ptr for a in args)


def count_hooks(model: torch.nn.Module) -> int:
    """Number of forward and forward-pre hooks on ``model`` and all its submodules, plus the
    forwards that act_core's fused steering has replaced (see :mod:`act_core.fused_norms`)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
               + int(getattr(m.__dict__.get("forward"), "_act_fused", False)) for m in model.modules())


class _HookSet(GuardedOwner):
    """Forward hooks registered together and removed together: all or nothing under any
    exception, one thread per model, no hook in copies (:class:`act_core.hookguard.GuardedHooks`)."""

    _guard: GuardedHooks
    _what = "steered"

    @property
    def _handles(self) -> List[Any]:
        return self._guard.handles

    def _attach_all(self, pairs, root: Optional[torch.nn.Module] = None) -> None:
        """``pairs``: ``(module, hook)`` registers a forward hook; ``(module, forward, "forward")``
        replaces the module's ``forward`` (an instance attribute, deleted on removal)."""
        if self._guard.handles:
            raise RuntimeError(f"{type(self).__name__} is already attached")
        self._guard.attach(pairs, root, _ForwardOverride)


# -- collection --------------------------------------------------------------------------------


class ActivationCollector(_HookSet):
    """Pool the outputs of named modules over every forward pass while attached.

    Args:
        model: the root module; names are dotted submodule paths (:func:`act_core.mapfile.find_module`).
        modules: module name -> tuple output index (or None), or a list of names.
        pooling: ``mean`` (default), ``max``, ``min``, ``last`` or ``none`` (see :mod:`pooling`).
        stop_after: raise :class:`StopForward` once every hooked module has recorded in the
            current pass, so the rest of the model is skipped. Callers wrap the forward in
            :func:`run_until_stop`.
        select: optional callable applied to each raw output before pooling (e.g. keep the
            conditional half of a CFG batch).
        sketch: keep a bounded-memory :class:`~act_core.streaming.QuantileSketch` of size
            ``sketch`` per module instead of every pooled row.

    Set ``collector.attention_mask`` (``(B, T)``, 1 = real token) before each batch for
    padding-aware pooling. Memory: one ``(B, D)`` float32 row block per module and batch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        modules: Union[Mapping[str, Optional[int]], Sequence[str]],
        pooling: str = "mean",
        stop_after: bool = False,
        select: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        sketch: Optional[int] = None,
    ):
        self.model = model
        self.sketch = sketch
        self.modules: Dict[str, Optional[int]] = dict(modules) if isinstance(modules, Mapping) else {n: None for n in modules}
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.stop_after = stop_after
        self.select = select
        self.attention_mask: Optional[torch.Tensor] = None
        self.records: Dict[str, Any] = {n: self._new_record() for n in self.modules}
        self.shapes: Dict[str, tuple] = {}
        self._fired: set = set()
        self._guard = GuardedHooks(self, "collected from")
        for n in self.modules:
            find_module(model, n)  # fail early, before any hook is attached

    def _new_record(self):
        if self.sketch is None:
            return []
        from .streaming import QuantileSketch

        return QuantileSketch(self.sketch)

    def _make_hook(self, name: str, index: Optional[int]):
        def hook(module, args, output):
            x = _pick(output, index)
            if not isinstance(x, torch.Tensor):
                raise MapFileError(f"module {name!r}: no tensor to record at output index {index} of its "
                                   f"{type(output).__name__} output")
            if self.select is not None:
                x = self.select(x)
            self.shapes[name] = tuple(x.shape)
            pooled = pool(x, self.pooling, self.attention_mask).cpu()
            if self.sketch is None:
                self.records[name].append(pooled)
            else:
                self.records[name].update(pooled)
            self._fired.add(name)
            if len(self._fired) == len(self.modules):
                self._fired.clear()
                if self.stop_after:
                    raise StopForward()

        return mark(hook)

    def attach(self) -> "ActivationCollector":
        self._attach_all([(find_module(self.model, n), self._make_hook(n, tree_index(self.model, n, idx)))
                          for n, idx in self.modules.items()], self.model)
        return self

    def _after_remove(self) -> None:
        self._fired.clear()

    def __enter__(self) -> "ActivationCollector":
        try:
            self.attach()
            return self
        except BaseException:
            self.remove()
            raise

    def take(self) -> Dict[str, Any]:
        """Return ``{module: (samples, D) float32}`` gathered so far (``QuantileSketch`` per module
        when ``sketch`` is set), and start afresh."""
        out = {}
        for n, rec in self.records.items():
            if (self.sketch is None and not rec) or (self.sketch is not None and rec.n == 0):
                raise RuntimeError(f"module {n!r} recorded no activation: did the forward pass reach it?")
            out[n] = torch.cat(rec, 0) if self.sketch is None else rec
            self.records[n] = self._new_record()
        return out


def run_until_stop(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Call ``fn``; a :class:`StopForward` from a collector ends it quietly (returns None)."""
    try:
        return fn(*args, **kwargs)
    except StopForward:
        return None


# -- steering ----------------------------------------------------------------------------------

Gate = Callable[[str, torch.Tensor], Any]


class SteerHandle(_HookSet):
    """Forward hooks that transport module outputs; ``remove()`` restores the model.

    ``strength`` is a float (every module) or a dict of per-module strengths (modules not
    in it use ``tmap.default_strength``). ``support`` overrides every map's default support.
    ``gate(name, output)`` may return True (steer the whole batch), False (leave this call
    alone) or a ``(B,)`` bool tensor of batch rows to steer (e.g. the conditional half).
    ``mask(name, output)`` may return None (steer everywhere) or a weight tensor broadcastable to
    the output with values in [0, 1]: the result is ``lerp(x, T(x), w)``, exactly ``x`` where
    ``w = 0`` and exactly ``T(x)`` where ``w = 1`` (e.g. a spatial mask resized to the layer).
    ``inplace`` lets hooks write into a module's fresh output tensor instead of allocating
    a new one (never for views, autograd tensors, or outputs that alias an input).
    ``fuse`` (default True): a plain ``torch.nn.LayerNorm``/``GroupNorm`` whose map folds
    exactly into its affine parameters (support ``all``, a per-unit layout; see
    :mod:`act_core.fused_norms`) is steered by calling the norm with transported parameters
    instead of hooking its output: no extra pass, no hook dispatch, parameters untouched.
    The result equals the hook's up to float rounding; ``fuse=False`` hooks every module.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tmap: TransportMap,
        strength: Union[float, Mapping[str, float], None] = None,
        support: Optional[str] = None,
        name_map: Optional[Callable[[str], str]] = None,
        gate: Optional[Gate] = None,
        layout: Optional[str] = None,
        inplace: bool = True,
        fuse: bool = True,
        mask: Optional[Gate] = None,
    ):
        if not isinstance(tmap, TransportMap):
            raise TypeError(f"expected a TransportMap, got {type(tmap).__name__} (load one with TransportMap.load(path))")
        self.model, self.tmap, self.support, self.gate, self.layout = module_tree(model), tmap, support, gate, layout
        self.inplace, self.fuse, self.mask = inplace, fuse, mask
        self.name_map = name_map
        self.set_strength(strength)
        self._guard = GuardedHooks(self, "steered")
        self._hooks: Dict[str, Callable] = {}  # built once, re-registered by every attach()
        self._norms: Dict[str, FusedNorm] = {}  # fused norms' cached parameters, kept across attach()
        if support is not None:
            normalize_support(support)  # an unknown name fails here, not at the first forward
        self.tmap.check_model(self.model, name_map=name_map)  # before anything is attached

    def set_strength(self, strength: Union[float, Mapping[str, float], None]) -> None:
        self.strengths = self.tmap.module_strengths(strength)

    def _index(self, name: str) -> Index:
        local = self.name_map(name) if self.name_map else name
        return tree_index(self.model, local, self.tmap.output_index.get(name))

    def _make_hook(self, name: str):
        t = self.tmap.maps[name]
        index = self._index(name)
        layout = self.layout or self.tmap.layouts.get(name, "auto")
        support = effective_support(t, self.support)
        inplace_allowed = self.inplace
        local = self.name_map(name) if self.name_map else name

        kernels: Dict[tuple, Callable] = {}  # (λ, dtype, device, ndim) -> checked kernel

        def hook(module, args, output):
            lam = self.strengths[name]
            if lam == 0:
                return None
            x = output if type(output) is torch.Tensor else _picked(output, index, local, module, t.units, layout)
            rows = True if self.gate is None else self.gate(name, x)
            if rows is False:
                return None
            lay = layout if layout != "auto" else ("spatial_mean" if x.ndim == 4 else "tokens")
            w = None if self.mask is None else self.mask(name, x)
            key = (lam, x.dtype, x.device, x.ndim)
            kernel = kernels.get(key)
            if kernel is None:  # the first call of its kind: check the output fits the map before changing it
                problem = output_problem(local, module, output, t.units, layout, index)
                if problem:
                    raise MapFileError(f"{problem}; nothing was steered")
                kernel = kernels[key] = t.kernel(lam, support, lay, x.dtype, x.device)
            if rows is not True:
                y = x.clone()
                y[rows] = t.apply(x[rows], lam, support, lay)
                return _replace(output, index, y if w is None else torch.lerp(x, y, w.to(x.dtype)))
            y = kernel(x, inplace_allowed and w is None and _owns(x, args))
            if w is not None:
                y = torch.lerp(x, y, w.to(y.dtype))
            return y if output is x else _replace(output, index, y)

        return mark(hook)

    def attach(self) -> "SteerHandle":
        """Register the hooks (again). A handle can be attached and removed many times, e.g.
        around every UNet call; the hook functions and their cached kernels are built once."""
        local = self.name_map or (lambda n: n)
        if not self._hooks:
            self._hooks = {n: self._make_hook(n) for n in self.tmap.maps}
        pairs, fused_ids = [], set()
        for n in self.tmap.maps:
            module = find_module(self.model, local(n))
            # one fused forward per module object; a module reached under a second name (or
            # mapped twice by name_map) gets a hook after it, as with fuse=False
            forward = self._fused_forward(n, module) if self.fuse and id(module) not in fused_ids else None
            if forward is None:
                pairs.append((module, self._hooks[n]))
            else:
                fused_ids.add(id(module))
                pairs.append((module, forward, "forward"))
        self._attach_all(pairs, self.model)
        return self

    @property
    def fused(self) -> List[str]:
        """Map names steered inside their norm's own call (while attached)."""
        return [n for n, h in zip(self.tmap.maps, self._handles) if isinstance(h, _ForwardOverride)]

    def _fused_forward(self, name: str, module: torch.nn.Module) -> Optional[Callable]:
        """A replacement ``forward`` running the transported norm, or None (use the hook)."""
        t = self.tmap.maps[name]
        layout = self.layout or self.tmap.layouts.get(name, "auto")
        if self._index(name) is not None or not fusible(module, t, self.support, layout):
            return None
        norm = self._norms.get(name)
        if norm is None or norm.module is not module:
            norm = self._norms[name] = FusedNorm(module, t, layout)
        norm.prepare(self.strengths[name])
        hook, plain = self._hooks[name], type(module).forward

        on = [True]  # switched off by removal (see _ForwardOverride)

        def forward(layer, input):
            if layer is not module:  # a deep copy made while steered: run the copy's own layer
                return type(layer).forward(layer, input)
            lam = self.strengths[name]
            if lam == 0 or not on[0]:
                return plain(module, input)
            params = None
            if self.gate is None and self.mask is None and norm.takes(input) and not (torch.is_grad_enabled() and norm.trains):
                params = norm.params(lam, input)
            if params is None:  # gated rows, another shape, gradients to the layer, float16 overflow: the hook path
                out = plain(module, input)
                y = hook(module, (input,), out)
                return out if y is None else y
            return norm(input, *params)

        forward._act_on = on
        return types.MethodType(forward, module)  # bound, so copy.deepcopy rebinds it to the copy


def _handle(model, tmap, strength, compile, kwargs):
    if compile:  # the opt-in compiled path: act_core.compiled (torch.compile), imported on first use
        from .compiled import CompiledSteerHandle

        return CompiledSteerHandle(model, tmap, strength, backend=compile, **kwargs)
    return SteerHandle(model, tmap, strength, **kwargs)


def attach(model: torch.nn.Module, tmap: TransportMap, strength=None, compile=False, **kwargs) -> SteerHandle:
    """Attach steering hooks now; call ``.remove()`` on the result to detach (``with steer(...)``
    removes them for you, also when interrupted)."""
    handle = _handle(model, tmap, strength, compile, kwargs)
    try:
        return handle.attach()
    except BaseException:
        handle.remove()
        raise


def steer(model: torch.nn.Module, tmap: TransportMap, strength=None, compile=False, **kwargs) -> SteerHandle:
    """``with steer(model, tmap, strength=1.0) as handle: ...`` — hooks exist only inside the block.

    Keyword arguments: ``support``, ``name_map``, ``gate``, ``layout``, ``inplace``, ``fuse``
    (see :class:`SteerHandle`). The map is checked against the model here; the hooks are
    attached on entering the block and removed on leaving it, whatever ends it.
    ``compile``: True (or a ``torch.compile`` backend name) steers through compiled forwards
    that fuse each norm with its band test and map (:mod:`act_core.compiled`); off by default.
    The compiled handle attaches and removes through the same guarded path (all or nothing
    under any exception, one thread per model, no hooks in copies).
    """
    return _handle(model, tmap, strength, compile, kwargs)
