"""Fitting procedures, written once against a Runner.

A *Runner* is anything that can push a list of inputs (prompts) through a model so that
hooked modules see their activations. Adapters for diffusers, ComfyUI and transformers each
provide one; tests use a few lines around a plain ``nn.Module``::

    class Runner(Protocol):
        model: torch.nn.Module            # module names resolve against this tree
        architecture: Optional[str]       # recorded in the map, checked when loading
        def run(self, inputs, collector): # batches; sets collector.attention_mask per batch;
            ...                           # wraps each forward in hooks.run_until_stop
        # optional: def order(self, names) -> names in forward (completion) order; without
        # it the reference causal procedure measures the order with one probe forward pass

Procedures:

``simultaneous``
    One collection pass over source and target with every module hooked; each module is
    fitted on activations of the *unsteered* model (the reference's ``atonce``).
``causal``
    Modules are fitted one at a time in forward order. Module ℓ is fitted on activations
    produced with every upstream map already applied at λ = 1, to source *and* target
    (paper Def. 3.2; the reference's ``incr``). Computed in ONE forward pass: source and
    target inputs go through the model as one batch, and the hook of module ℓ fits ℓ's map
    on that batch and immediately transports the batch's output, so every downstream module
    sees upstream-transported activations. Same estimates as the reference procedure (batch
    rows never interact in the models we steer), at the cost of one pass instead of ≈ L/2.
    Needs a runner with a writable ``batch_size`` and memory for all inputs at once.
``causal_reference``
    The reference's procedure literally: for each module ℓ, re-run the model up to ℓ over
    all inputs with the upstream maps attached. ≈ L prefix passes; kept for checking and for
    runners that cannot batch everything at once.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import torch

from .estimators import fit_transport
from .hooks import ActivationCollector, StopForward, _pick, _replace, steer
from .mapfile import TransportMap, map_meta_defaults
from .pooling import pool
from .selection import ordered, select_modules

PROCEDURES = ("simultaneous", "causal", "causal_reference")
#: progress(done, total, message); it may raise to cancel (no map is returned then).
Progress = Callable[[int, int, str], None]


class Runner(Protocol):
    model: torch.nn.Module
    architecture: Optional[str]

    def run(self, inputs: Sequence[Any], collector: ActivationCollector) -> None: ...


def _layout(shape: tuple, method: str = "linear") -> str:
    """How a map acts on the recorded output shape, as the reference applies each method: on a
    4-D ``(B, C, H, W)`` output Linear-AcT shifts each channel by its transported spatial mean
    (``spatial_mean``); Mean-AcT, Gaussian and AurA act on every pixel with the band tested on
    the spatial mean (``per_pixel``: Gaussian rescales the spatial pattern by σ_b/σ_a, AurA
    damps it). Other shapes: per token."""
    if len(shape) != 4:
        return "tokens"
    return "spatial_mean" if method == "linear" else "per_pixel"


def collect(
    runner: Runner,
    inputs: Sequence[Any],
    modules: Mapping[str, Optional[int]],
    pooling: str = "mean",
    stop_after: bool = True,
    sketch: Optional[int] = None,
) -> tuple:
    """Run ``inputs`` once with ``modules`` hooked; return ``({name: (N, D)}, {name: shape})``
    (``{name: QuantileSketch}`` when ``sketch`` is set)."""
    collector = ActivationCollector(runner.model, modules, pooling=pooling, stop_after=stop_after, sketch=sketch)
    with collector:
        runner.run(inputs, collector)
    return collector.take(), dict(collector.shapes)


def forward_order(runner: Runner, names: Sequence[str], probe: Sequence[Any]) -> list:
    """``names`` in the order their forward hooks complete, from one forward pass over ``probe``.

    Modules the pass never reaches keep their ``named_modules()`` order, after the others.
    """
    seen: list = []
    handles = []
    try:
        for n in names:
            handles.append(runner.model.get_submodule(n).register_forward_hook(
                lambda m, a, o, n=n: seen.append(n) if n not in seen else None))
        runner.run(list(probe), ActivationCollector(runner.model, {}, stop_after=False))
    finally:
        for h in handles:
            h.remove()
    rest = [n for n in ordered(runner.model, list(names)) if n not in seen]
    return seen + rest


def fit_map(
    runner: Runner,
    source: Sequence[Any],
    target: Sequence[Any],
    modules: Union[str, Sequence[str], Mapping[str, Optional[int]]],
    method: str = "linear",
    pooling: str = "mean",
    procedure: str = "simultaneous",
    support: Optional[str] = None,
    progress: Optional[Progress] = None,
    sketch: Optional[int] = None,
    **meta: Any,
) -> TransportMap:
    """Fit one transport per module from ``source`` inputs toward ``target`` inputs.

    Args:
        modules: regex patterns (full match, optional ``:k`` tuple index) or an explicit
            ``{name: index}`` mapping.
        method: ``linear`` | ``mean`` | ``gaussian`` | ``aura``.
        procedure: ``simultaneous`` | ``causal`` | ``causal_reference`` (see module docstring).
            The default is ``simultaneous``, not the paper's causal procedure: one-pass
            ``causal`` holds every source and target input in one forward batch (the memory
            of sampling all prompts at once), ``causal_reference`` re-runs the model once per
            module, and on the project's miniature SDXL causal fitting gave the same effect as
            simultaneous (reports/miniworld). Choose ``causal`` when the batch fits in memory.
        support: the maps' default support (also used for upstream maps in causal fitting).
        progress: called as ``progress(done, total, message)``; raising from it cancels.
        sketch: bounded memory: keep a quantile sketch of this size per module instead of
            every pooled sample (``simultaneous`` and ``causal_reference``; see
            :mod:`act_core.streaming`). None (default) fits on the exact samples.
        meta: extra metadata recorded in the map (e.g. ``style="watercolor"``).
    """
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown procedure {procedure!r}: choose one of {', '.join(PROCEDURES)}")
    if len(source) == 0 or len(target) == 0:
        raise ValueError(f"empty prompt set: {len(source)} source and {len(target)} target inputs; both need at least 2")
    chosen = dict(modules) if isinstance(modules, Mapping) else select_modules(runner.model, modules)
    # named_modules() order is not always forward order (diffusers' UNet lists up_blocks before
    # mid_block): the reference causal procedure needs the true order, measured if not given.
    order = getattr(runner, "order", None)
    if callable(order):
        names = list(order(list(chosen)))
    elif procedure == "causal_reference":
        names = forward_order(runner, list(chosen), source[:1])
    else:
        names = ordered(runner.model, list(chosen))
    tmap = TransportMap(
        meta=map_meta_defaults(
            method, pooling, procedure, getattr(runner, "architecture", None),
            [str(s) for s in source], [str(t) for t in target], default_support=support, **meta,
        )
    )
    tick = progress or (lambda done, total, msg: None)
    if sketch is not None:
        if procedure == "causal":
            raise ValueError("sketch needs procedure 'simultaneous' or 'causal_reference' (one-pass causal holds the batch anyway)")
        tmap.meta["quantile_sketch"] = int(sketch)
    fit = _fitter(method, support, sketch)
    if procedure == "simultaneous":
        tick(0, 3, "collecting source activations")
        src, shapes = collect(runner, source, {n: chosen[n] for n in names}, pooling, sketch=sketch)
        tick(1, 3, "collecting target activations")
        tgt, _ = collect(runner, target, {n: chosen[n] for n in names}, pooling, sketch=sketch)
        tick(2, 3, f"fitting {len(names)} modules")
        for n in names:
            tmap.add(n, fit(src[n], tgt[n]), _layout(shapes[n], method), chosen[n])
        tick(3, 3, "done")
        return tmap
    if procedure == "causal":
        return _fit_causal_one_pass(runner, source, target, chosen, names, method, pooling, support, tmap, tick)
    total = len(names)
    for i, n in enumerate(names):
        tick(i, total, f"causal fit of {n} ({i + 1}/{total})")
        with steer(runner.model, tmap, strength=1.0, support=support) if len(tmap) else contextlib.nullcontext():
            src, shapes = collect(runner, source, {n: chosen[n]}, pooling, sketch=sketch)
            tgt, _ = collect(runner, target, {n: chosen[n]}, pooling, sketch=sketch)
        tmap.add(n, fit(src[n], tgt[n]), _layout(shapes[n], method), chosen[n])
    tick(total, total, "done")
    return tmap


def _fitter(method, support, sketch):
    if sketch is None:
        return lambda src, tgt: fit_transport(src, tgt, method, support)
    from .streaming import fit_transport_streaming

    return lambda src, tgt: fit_transport_streaming(src, tgt, method, support)


class _InPassFitter(ActivationCollector):
    """A collector whose hooks fit each module's map on the batch and transport it in place.

    Rows ``[:n_source]`` of every batch are source inputs, the rest target inputs.
    """

    def __init__(self, model, modules, pooling, n_source, fit, tick):
        super().__init__(model, modules, pooling=pooling, stop_after=True)
        self.n_source, self.fit, self.tick, self.done = n_source, fit, tick, 0

    def _make_hook(self, name, index):
        def hook(module, args, output):
            if name in self._fired:
                raise RuntimeError(f"module {name!r} ran twice in one forward pass; use procedure='causal_reference'")
            x = _pick(output, index)
            n = self.n_source
            if x.shape[0] <= n:
                raise RuntimeError(
                    f"the runner split the inputs into several forward passes (batch of {x.shape[0]} rows at {name!r}); "
                    "procedure='causal' needs all inputs in one batch"
                )
            mask = self.attention_mask
            src = pool(x[:n], self.pooling, None if mask is None else mask[:n])
            tgt = pool(x[n:], self.pooling, None if mask is None else mask[n:])
            self.tick(self.done, len(self.modules), f"causal fit of {name} ({self.done + 1}/{len(self.modules)})")
            y = self.fit(name, src, tgt, tuple(x.shape))
            self.done += 1
            self._fired.add(name)
            if len(self._fired) == len(self.modules):
                raise StopForward()
            return _replace(output, index, y(x))

        return hook


def _fit_causal_one_pass(runner, source, target, chosen, names, method, pooling, support, tmap, tick):
    if not hasattr(runner, "batch_size"):
        raise ValueError(
            f"procedure 'causal' needs a runner with a batch_size attribute ({type(runner).__name__} has none); "
            "use procedure='causal_reference'"
        )

    def fit(name, src, tgt, shape):
        layout = _layout(shape, method)
        t = fit_transport(src, tgt, method, support)
        tmap.add(name, t, layout, chosen[name])
        return lambda x: t.apply(x, 1.0, support, layout)

    inputs = list(source) + list(target)
    fitter = _InPassFitter(runner.model, {n: chosen[n] for n in names}, pooling, len(source), fit, tick)
    saved = runner.batch_size
    runner.batch_size = len(inputs)
    try:
        with fitter:
            runner.run(inputs, fitter)
    except torch.OutOfMemoryError as e:
        raise torch.OutOfMemoryError(
            f"procedure 'causal' runs all {len(inputs)} inputs ({len(source)} source + {len(target)} target) through the "
            "model as ONE batch and ran out of memory: use procedure 'causal_reference' (the same estimates, memory of "
            f"one batch of the runner's batch_size, one prefix pass per module), fewer prompts or a smaller "
            f"resolution. ({e})"
        ) from None
    finally:
        runner.batch_size = saved
    missing = [n for n in names if n not in tmap]
    if missing:
        raise RuntimeError(f"the forward pass never reached {missing[:3]}; nothing was fitted for them")
    tick(len(names), len(names), "done")
    return tmap
