"""Helpers for the tests of the pack next to the rest of a ComfyUI graph (tests/comfy/test_interplay_*.py).

Synthetic maps (no fit: fitted on random data in milliseconds) on the tiny SDXL's modules, a
tiny LoRA in the Kohya/LyCORIS key layout ComfyUI's LoraLoader reads, sampling with ComfyUI's
own sampler, and the "nothing stays behind" check every interplay test ends with.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch

from act_core import TransportMap, count_hooks, fit_transport
from act_core.diffusion.families.sdxl import try_from_comfy

STEPS, SIZE = 3, 64
POSITIVE, NEGATIVE = "a photo of a cat", "blurry"


def pack_modules():
    """The pack's node modules (import after the ``pack`` fixture ran)."""
    from act_steering_pack.nodes import apply, comfy_compat, steering

    return type("Mods", (), dict(apply=apply, cc=comfy_compat, steering=steering))


# -- synthetic maps ------------------------------------------------------------------------------

def unet_norms(model, kinds=("LayerNorm", "GroupNorm")) -> Dict[str, torch.nn.Module]:
    """``{canonical name: module}`` of the UNet's LayerNorms/GroupNorms (forward order)."""
    out = {}
    for name, module in model.model.diffusion_model.named_modules():
        kind = "GroupNorm" if isinstance(module, torch.nn.GroupNorm) else "LayerNorm" if isinstance(
            module, torch.nn.LayerNorm) else None
        if kind in kinds:
            canonical = try_from_comfy(f"diffusion_model.{name}")
            if canonical is not None:
                out.setdefault(canonical, module)
    return out


def _units(module) -> int:
    return module.num_channels if isinstance(module, torch.nn.GroupNorm) else module.normalized_shape[0]


def synthetic_map(modules: Dict[str, torch.nn.Module], method="gaussian", groupnorm_layout="per_pixel", seed=0,
                  shift=0.8, scale=1.6, n=64) -> TransportMap:
    """A map with a strong effect on ``modules``: every unit moves from N(0, 1) to N(shift, scale²)
    (the tiny model's norm outputs are about N(0, 1)). ``gaussian`` has support ``all`` (folds in
    fused mode); ``linear`` keeps the band ``q_0_100`` (always hooked)."""
    g = torch.Generator().manual_seed(seed)
    tmap = TransportMap(meta={"architecture": "sdxl"})
    for name, module in modules.items():
        d = _units(module)
        src = torch.randn(n, d, generator=g)
        tgt = torch.randn(n, d, generator=g) * scale + shift
        layout = groupnorm_layout if isinstance(module, torch.nn.GroupNorm) else "tokens"
        tmap.add(name, fit_transport(src, tgt, method=method), layout, None)
    return tmap


def clip_layer_map(clip, seed=0, layers: Iterable[int] = (0, 1)) -> TransportMap:
    """A token-layout map on the outputs of text-encoder layers of both CLIPs (tiny: 32 units)."""
    g = torch.Generator().manual_seed(seed)
    tmap = TransportMap(meta={"architecture": "sdxl"})
    for enc in ("text_encoder", "text_encoder_2"):
        for i in layers:
            tmap.add(f"{enc}.encoder.layers.{i}",
                     fit_transport(torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g) * 1.5 + 0.5,
                                   method="gaussian"), "tokens", None)
    return tmap


# -- sampling ------------------------------------------------------------------------------------

def encode(cc, clip, text):
    return cc.encode(clip, text)


def sample(cc, model, clip, cfg=5.0, positive=POSITIVE, negative=NEGATIVE, seed=7, steps=STEPS, size=SIZE,
           latent: Optional[torch.Tensor] = None, **kw) -> torch.Tensor:
    """ComfyUI's KSampler path on ``model`` (euler, normal), inside inference mode as ComfyUI runs nodes."""
    pos = positive if isinstance(positive, list) else cc.encode(clip, positive)
    neg = negative if isinstance(negative, list) else cc.encode(clip, negative)
    if latent is None:
        latent = cc.empty_latent(model, size, size)
    with torch.inference_mode():
        return cc.sample(model, pos, neg, latent, seed, steps, cfg, **kw)


# -- nothing stays behind ------------------------------------------------------------------------

def snapshot(model) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def assert_clean(cc, model, clip, state: Dict[str, torch.Tensor], base: torch.Tensor, **sample_kw) -> None:
    """After everything else sampled: no hook anywhere, the input MODEL samples ``base`` bit for bit,
    its weights equal ``state`` bit for bit and no module keeps a lowvram weight function."""
    out = sample(cc, model, clip, **sample_kw)
    assert count_hooks(model.model) == 0, "a hook stayed on the UNet"
    assert torch.equal(out, base), "the input MODEL no longer reproduces its own output"
    now = model.model.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(now[k], v)]
    assert not changed, f"weights changed after sampling: {changed[:5]}"
    leftovers = [n for n, m in model.model.named_modules() if getattr(m, "weight_function", None) or getattr(m, "bias_function", None)]
    assert not leftovers, f"modules keep patch functions: {leftovers[:5]}"
    assert "act_steering" not in str(model.model_options), "the input MODEL carries the pack's wrapper"


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rounding_limit(b: torch.Tensor, ulps: float = 4e-6) -> float:
    return ulps * max(1.0, b.abs().max().item())


def assert_rounding_close(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor, ulps: float = 4e-6) -> float:
    """``a`` equals ``b`` up to float32 rounding (a few ulp of the largest value, as two ways of
    computing the same model give), while the effect ``b - ref`` under test is far larger."""
    err, effect = max_abs(a, b), max_abs(b, ref)
    limit = rounding_limit(b, ulps)
    assert effect > 100 * limit, f"no effect to compare: {effect} (limit {limit})"
    assert err < limit, f"differs by {err} (limit {limit}; effect {effect})"
    return err


# -- a tiny LoRA ---------------------------------------------------------------------------------

UNET_LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "ff.net.2")
CLIP_LINEARS = {"self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj", "mlp.fc1": "mlp_fc1"}


def tiny_lora(model, clip=None, seed=0, rank=4, norms: Iterable[str] = (), scale=0.1, norm_scale=0.5) -> Dict[str, torch.Tensor]:
    """A LoRA state dict in the Kohya / LyCORIS key layout (``lora_unet_*``, ``lora_te1_*``, ``lora_te2_*``)
    for the tiny SDXL: rank-``rank`` ``lora_up``/``lora_down`` pairs on every transformer block's
    attention and feed-forward linears and on CLIP-L/CLIP-G self-attention and MLP layers, and
    full ``w_norm``/``b_norm`` differences (LyCORIS' trained norms) on the UNet modules named in
    ``norms`` (ComfyUI names below ``diffusion_model.``)."""
    g = torch.Generator().manual_seed(seed)
    sd: Dict[str, torch.Tensor] = {}
    weights = model.model.diffusion_model.state_dict()

    def pair(key: str, out_f: int, in_f: int):
        sd[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * scale
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) * scale
        sd[f"{key}.alpha"] = torch.tensor(float(rank))

    for name, w in weights.items():
        if name.endswith(".weight") and w.ndim == 2 and any(name.endswith(f"{s}.weight") for s in UNET_LINEARS):
            pair("lora_unet_" + name[:-len(".weight")].replace(".", "_"), w.shape[0], w.shape[1])
    for name in norms:
        key = "lora_unet_" + name.replace(".", "_")
        w, b = weights[f"{name}.weight"], weights[f"{name}.bias"]
        sd[f"{key}.w_norm"] = torch.randn(w.shape, generator=g) * norm_scale
        sd[f"{key}.b_norm"] = torch.randn(b.shape, generator=g) * norm_scale
    if clip is not None:
        te = clip.cond_stage_model.state_dict()
        for prefix, tag in (("clip_l", "lora_te1"), ("clip_g", "lora_te2")):
            for i in range(3):
                for module, kohya in CLIP_LINEARS.items():
                    w = te[f"{prefix}.transformer.text_model.encoder.layers.{i}.{module}.weight"]
                    pair(f"{tag}_text_model_encoder_layers_{i}_{kohya}", w.shape[0], w.shape[1])
    return sd


def save_lora(path, sd: Dict[str, torch.Tensor]):
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path
