"""Attaching and removing act_core's hooks safely: all or nothing, one thread, clean copies.

Three guarantees, all paid for when hooks are attached or removed, never per forward call:

- **All or nothing, under any exception.** :class:`GuardedHooks` records every module it may
  touch *before* touching it, and removal finds our hooks by identity in the modules' own hook
  tables (never through the handles ``register_forward_hook`` returns, which an interrupt can
  lose). So when any exception, an asynchronous ``KeyboardInterrupt`` included, lands at any
  point of attaching, the modules are cleaned again before it propagates; when it lands while
  removing, removal is finished before it propagates. After either the model is exactly as
  before (no hook, no replaced ``forward``, no attribute of ours).
- **Ctrl-C never splits a removal.** Python may deliver a ``KeyboardInterrupt`` at the very
  first instruction of a function, before any ``try`` in it, so no function can protect its
  own start. While act_core hooks are attached from the main thread, the SIGINT handler is
  wrapped: a Ctrl-C that arrives while :func:`remove_hooks` / :func:`exit_hooks` run (from
  their first instruction) is held and delivered, as the usual ``KeyboardInterrupt``, as soon
  as the removal is complete; at any other moment it is delivered at once. The original
  handler is back when the last hooks are removed. (Other threads never receive SIGINT.)
- **One steering thread per model object.** Hooks act on every forward of the module they sit
  on, whichever thread runs it, so two threads steering one model object would mix their maps.
  Attaching claims the root model and every hooked module for the calling thread; a claim by a
  live owner in another thread refuses the attach with :class:`ConcurrentSteeringError`,
  naming the fix (one copy of the model per thread). Nested steering in one thread is allowed.
- **Copies and pickles carry no hooks.** Every hooked module gets an instance-level
  ``__getstate__`` (what ``copy.deepcopy``, ``copy.copy`` and ``pickle``/``torch.save`` call)
  that returns the module's state without our hooks and replaced ``forward``; removal deletes
  it again. A deep copy made inside ``with steer(...)`` is a plain, unsteered model.

Our hook functions carry the attribute ``_act_hook = True``; a replaced ``forward`` is a bound
method whose function carries it.
"""

from __future__ import annotations

import signal
import sys
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


class ConcurrentSteeringError(RuntimeError):
    """Another thread steers (or collects from) the same model object right now."""


def mark(fn: Callable) -> Callable:
    """Mark ``fn`` (a hook, or a replacement ``forward``) as one of act_core's."""
    getattr(fn, "__func__", fn)._act_hook = True
    return fn


def _ours(fn: Any) -> bool:
    return bool(getattr(getattr(fn, "__func__", fn), "_act_hook", False))


def has_our_hooks(module: torch.nn.Module) -> bool:
    d = module.__dict__
    return any(_ours(v) for v in d.get("_forward_hooks", {}).values()) or _ours(d.get("forward"))


# -- copies ------------------------------------------------------------------------------------------

class _StateWithoutHooks:
    """An instance-level ``__getstate__``: the module's state without act_core's hooks."""

    def __init__(self, module: torch.nn.Module, previous: Optional[Callable] = None):
        self.module, self.previous = module, previous

    def __call__(self):
        m = self.module
        state = self.previous() if self.previous is not None else type(m).__getstate__(m)
        return without_our_hooks(state) if isinstance(state, dict) else state


def without_our_hooks(state: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a module's ``__dict__``-like ``state`` without our hooks, replaced ``forward``
    and ``__getstate__`` (the other entries are shared, as in the state itself)."""
    state = dict(state)
    if isinstance(state.get("__getstate__"), _StateWithoutHooks):
        del state["__getstate__"]
    hooks = state.get("_forward_hooks")
    if hooks:
        ours = {k for k, v in hooks.items() if _ours(v)}
        if ours:
            for table in _HOOK_TABLES:
                t = state.get(table)
                if t is not None:
                    state[table] = type(t)((k, v) for k, v in t.items() if k not in ours)
    if _ours(state.get("forward")):
        del state["forward"]
    return state


def _install_state_filter(module: torch.nn.Module) -> None:
    d = module.__dict__
    current = d.get("__getstate__")
    if not isinstance(current, _StateWithoutHooks):
        d["__getstate__"] = _StateWithoutHooks(module, current)


def _remove_state_filter(module: torch.nn.Module) -> None:
    d = module.__dict__
    current = d.get("__getstate__")
    if isinstance(current, _StateWithoutHooks) and not has_our_hooks(module):
        if current.previous is None:
            d.pop("__getstate__", None)
        else:
            d["__getstate__"] = current.previous


# -- threads -----------------------------------------------------------------------------------------

# No lock: an interrupt between acquiring a lock and the ``try`` that releases it would leave it
# held for ever. Every step is one list operation, atomic under the GIL: a claim is appended
# first and checked after, so of two threads claiming at once at least one sees the other.
_CLAIMS: Dict[int, List[Tuple[int, "weakref.ref"]]] = {}  # id(object) -> [(thread ident, owner)]
_OWNED: Dict[int, Tuple["weakref.ref", set]] = {}  # id(owner) -> (owner, ids of the objects it claimed)


def _claim(owner: object, objects: Iterable[object], what: str) -> None:
    me = threading.get_ident()
    entry = (me, weakref.ref(owner))
    keys = {id(o) for o in objects}
    prev = _OWNED.get(id(owner))
    _OWNED[id(owner)] = (entry[1], keys | prev[1] if prev is not None and prev[0]() is owner else keys)
    for k in keys:
        _CLAIMS.setdefault(k, []).append(entry)
    for k in keys:
        for tid, r in list(_CLAIMS.get(k, ())):
            other = r()
            if other is not None and other is not owner and tid != me:
                _release(owner)
                raise ConcurrentSteeringError(
                    f"this model is being {what} from another thread (thread id {tid}) right now: hooks act on every "
                    "forward of a module, whichever thread runs it, so two threads would mix their maps. Give each "
                    "thread its own copy of the model (copy.deepcopy(model), or load it once per thread), or steer "
                    "one after the other"
                )


def _release(owner: object) -> None:
    """Drop every claim of ``owner`` (and, on the objects it claimed, any of an owner that no longer exists).

    Only the objects ``owner`` claimed are visited (removal costs the same however many models were
    steered before); when the table has grown past 4096 objects every entry is swept once. The
    owner's record goes last, so a release cut short by an interrupt is completed by the next one.
    """
    rec = _OWNED.get(id(owner))
    sweep = len(_CLAIMS) > 4096
    keys = list(_CLAIMS) if sweep else (list(rec[1]) if rec is not None and rec[0]() is owner else [])
    for k in keys:
        entries = _CLAIMS.get(k)
        if entries is None:
            continue
        for e in list(entries):
            r = e[1]()
            if r is None or r is owner:
                try:
                    entries.remove(e)
                except ValueError:
                    pass
        if not entries and sweep:  # keep the table small without racing a new claim
            _CLAIMS.pop(k, None)
    if sweep:
        for i, (r, _) in list(_OWNED.items()):
            if r() is None:
                _OWNED.pop(i, None)
    if rec is not None and rec[0]() is owner:
        _OWNED.pop(id(owner), None)


def claims() -> int:
    """Number of objects claimed right now (0 when nothing is attached anywhere)."""
    return sum(1 for lst in list(_CLAIMS.values()) if any(r() is not None for _, r in list(lst)))


# -- Ctrl-C while removing -----------------------------------------------------------------------------

_SIG = {"previous": None, "holders": set(), "pending": False}


def _removing(frame) -> bool:
    """True when ``frame`` or a caller is :func:`remove_hooks` / :func:`exit_hooks` before its
    removal is complete (their local ``done`` is not yet True)."""
    while frame is not None:
        if frame.f_code in _PROTECTED and not frame.f_locals.get("done", False):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    if _removing(frame):
        _SIG["pending"] = True  # delivered when the removal is complete (_deliver)
        return
    _call_previous(signum, frame)


def _call_previous(signum, frame):
    previous = _SIG["previous"]
    if callable(previous):
        previous(signum, frame)
    else:
        raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _hold_sigint(guard) -> None:
    """Wrap the SIGINT handler while ``guard`` holds hooks (main thread, a Python handler set).
    The guard is recorded first, so a purge after any interruption releases it."""
    if not _main_thread():
        return
    _SIG["holders"].add(id(guard))
    try:
        current = signal.getsignal(signal.SIGINT)
        if current is _on_sigint or not callable(current):  # ours already, or SIG_DFL / SIG_IGN / not from Python
            return
        _SIG["previous"] = current
        signal.signal(signal.SIGINT, _on_sigint)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        pass


def _let_go_sigint(guard) -> None:
    """Idempotent: the original handler is back once no guard holds hooks."""
    _SIG["holders"].discard(id(guard))
    if not _SIG["holders"] and _main_thread():
        try:
            if signal.getsignal(signal.SIGINT) is _on_sigint:
                signal.signal(signal.SIGINT, _SIG["previous"])
        except (ValueError, OSError):
            pass


def _deliver() -> None:
    """Deliver a Ctrl-C held during a removal (as the original handler would have)."""
    if _SIG["pending"] and _main_thread():
        _SIG["pending"] = False
        _call_previous(signal.SIGINT, sys._getframe(1))


# -- attaching and removing ------------------------------------------------------------------------------

def _purge_module(module: torch.nn.Module, fns: set) -> None:
    """Remove every hook in ``fns`` from ``module`` (and a replaced ``forward`` in ``fns``);
    idempotent, and each step is one dict operation, so running it again finishes it."""
    d = module.__dict__
    hooks = d.get("_forward_hooks")
    if hooks:
        for key in [k for k, v in hooks.items() if v in fns]:
            for table in _HOOK_TABLES:
                t = d.get(table)
                if t is not None:
                    t.pop(key, None)
    fwd = d.get("forward")
    if fwd is not None and getattr(fwd, "__func__", fwd) in fns:
        on = getattr(getattr(fwd, "__func__", fwd), "_act_on", None)
        if on is not None:
            on[0] = False
        d.pop("forward", None)
    _remove_state_filter(module)


class GuardedHooks:
    """The hooks of one owner, attached all together or not at all (see the module docstring).

    ``attach(pairs, root)``: ``pairs`` are ``(module, hook)`` (a forward hook) or ``(module,
    forward, "forward")`` (a replaced ``forward``, made by ``make_override(module, forward)``).
    ``handles`` lists what was attached, in order (``RemovableHandle`` or the override object).
    """

    def __init__(self, owner: object, what: str = "steered"):
        self._owner = weakref.ref(owner)
        self.what = what
        self.handles: List[Any] = []
        self._touched: List[torch.nn.Module] = []
        self._fns: set = set()

    def attach(self, pairs: Sequence[tuple], root: Optional[torch.nn.Module],
               make_override: Callable[[torch.nn.Module, Callable], Any]) -> None:
        if self.handles:
            raise RuntimeError("already attached")
        pairs = list(pairs)
        # recorded before anything is touched, so a cleanup after any exception finds everything
        self._fns = {getattr(p[1], "__func__", p[1]) for p in pairs}
        self._touched = [p[0] for p in pairs]
        try:
            _claim(self._owner(), [root, *self._touched] if root is not None else self._touched, self.what)
            for module, fn, *kind in pairs:
                _install_state_filter(module)
                self.handles.append(make_override(module, fn) if kind else module.register_forward_hook(fn))
            _hold_sigint(self)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        try:
            self._purge()
        except BaseException:  # an exception while removing: finish removing, then let it through
            self._purge()
            raise

    def _purge(self) -> None:
        for fn in self._fns:  # a replaced forward that other code wrapped meanwhile runs the plain layer from now on
            on = getattr(fn, "_act_on", None)
            if on is not None:
                on[0] = False
        for module in self._touched:
            _purge_module(module, self._fns)
        owner = self._owner()
        if owner is not None:
            _release(owner)
        self.handles.clear()
        self._touched = []
        _let_go_sigint(self)

    @property
    def attached(self) -> bool:
        return bool(self.handles)


class ForwardOverride:
    """Replaces ``module.forward`` by an instance attribute; ``remove()`` deletes it again, so
    the class's forward (bit-identical behaviour) is back.

    ``forward`` must carry ``_act_on``, a one-item list it checks on every call: ``remove()``
    also switches it off, so if other code wrapped our forward in the meantime (e.g.
    accelerate's offload hooks, which keep the previous ``forward`` inside theirs) the wrapped
    copy runs the plain layer from then on."""

    def __init__(self, module: torch.nn.Module, forward: Callable):
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__}.forward is already replaced on this instance")
        getattr(forward, "__func__", forward)._act_fused = True
        mark(forward)
        module.forward = forward
        self.module, self.forward = module, forward

    def remove(self) -> None:
        self.forward._act_on[0] = False
        if self.module.__dict__.get("forward") is self.forward:
            del self.module.forward


def remove_hooks(owner) -> None:
    """``owner.remove()`` for act_core's hook owners (anything with a ``_guard``): removes every
    hook, finishing even when interrupted, and delivers a Ctrl-C held meanwhile afterwards."""
    done = False  # read by the SIGINT handler: a Ctrl-C is held while this is False
    try:
        owner._guard.remove()
        after = getattr(owner, "_after_remove", None)
        if after is not None:
            after()
    finally:
        done = True  # noqa: F841 (read through the frame)
        _deliver()


def exit_hooks(owner, *exc) -> None:
    """``owner.__exit__``: :func:`remove_hooks` with the same Ctrl-C guarantee from its first instruction."""
    done = False  # noqa: F841 (read through the frame by the SIGINT handler)
    try:
        remove_hooks(owner)
    finally:
        done = True  # noqa: F841
        _deliver()


class GuardedOwner:
    """What every act_core hook owner (anything with a ``_guard`` and an ``attach()``) shares:
    ``remove()``, ``with`` support and ``attached``. ``__enter__`` attaches unless attached already;
    an interrupt after attaching, before ``__enter__`` returns (no ``__exit__`` then), removes again."""

    _guard: "GuardedHooks"

    #: remove every hook (finishes even when interrupted; a Ctrl-C meanwhile is delivered after)
    remove = remove_hooks
    __exit__ = exit_hooks

    @property
    def attached(self) -> bool:
        return self._guard.attached

    def __enter__(self):
        if self._guard.attached:
            return self
        try:
            self.attach()
            return self
        except BaseException:
            self.remove()
            raise


_PROTECTED = {remove_hooks.__code__, exit_hooks.__code__}


__all__ = ["ConcurrentSteeringError", "GuardedHooks", "ForwardOverride", "mark", "has_our_hooks", "without_our_hooks", "claims",
           "remove_hooks", "exit_hooks"]
