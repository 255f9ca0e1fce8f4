"""What an artist would use instead of a transport map, written so they run beside AcT.

- **Mean-difference steering vector** (ActAdd / CAA style, on the same layers as a map):
  add ``s · (m_target − m_source)`` to a module's output, ``m`` = mean pooled activation of the
  target / source prompts, at any scale ``s``. It is a :class:`~act_core.mapfile.TransportMap`
  whose units all have ``ω = 1`` and ``β = m_b − m_a`` on the unbounded support, so the usual
  ``steer(..., strength=s)`` applies it: ``T_s(a) = a + s β``. Fitting it equals fitting
  Mean-AcT; what makes it the baseline is how it is used: a scale tuned over a wide range
  (ActAdd / CAA tune a coefficient, often well above 1) instead of AcT's λ ∈ [0, 1].
  :func:`mean_difference_map` turns any fitted map's statistics into that form.

- **Normalized Attention Guidance** (NAG; Chen, Bandyopadhyay, Zou, Song 2025, "Normalized
  Attention Guidance: Universal Negative Guidance for Diffusion Models", arXiv 2505.21179):
  negative prompting without CFG, in cross-attention space. In every cross-attention layer
  the image queries ``Q`` attend to the positive prompt's keys/values (``Z⁺``) and to the
  negative prompt's (``Z⁻``); per image token, over the channel axis::

      Z̃ = s·Z⁺ − (s − 1)·Z⁻                       extrapolate away from the negative
      r = ‖Z̃‖₁ / ‖Z⁺‖₁,   Ẑ = Z̃ · min(r, τ) / r      cap the L1-norm growth at τ
      Z = α·Ẑ + (1 − α)·Z⁺                          blend back toward the positive

  ``s`` is the guidance scale written as the NAG implementations write it (``s = 1`` is off;
  the paper's ``φ`` is ``s − 1``: ``Z̃ = Z⁺ + φ (Z⁺ − Z⁻)``), ``τ`` the normalisation threshold,
  ``α`` the blend. ``Z`` then goes through the layer's output projection as usual.
  :class:`NAGAttnProcessor` is a diffusers attention processor; :func:`nag` installs it on
  every ``attn2`` of a pipeline's UNet for the duration of a ``with`` block.

Negative prompts with CFG and prompts that say "without X" need no code: pass
``negative_prompt=`` / write the prompt (:func:`act_core.diffusion.pipeline.generate`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, Sequence, Union

import torch
import torch.nn.functional as F

from ..mapfile import TransportMap
from ..transport import UnitTransport

#: NAG defaults used by the miniature study (``τ`` and ``α`` as the NAG authors' few-step examples)
NAG_TAU = 2.5
NAG_ALPHA = 0.25


# -- mean-difference steering vectors -----------------------------------------------------------


def mean_difference_unit(source: torch.Tensor, target: torch.Tensor) -> UnitTransport:
    """``ω = 1``, ``β = mean(target) − mean(source)`` (float64 means) for ``(N, D)`` / ``(M, D)``
    pooled activations; the unbounded support. Applied at strength ``s``: ``a + s β``."""
    from ..estimators import fit_mean

    t = fit_mean(source, target)
    return UnitTransport(omega=torch.ones_like(t.omega), beta=t.beta.clone(), bands=t.bands.clone(),
                         flags=torch.zeros_like(t.flags), method="mean", default_support="all")


def mean_difference_map(tmap: TransportMap) -> TransportMap:
    """A steering-vector map on the same modules as ``tmap`` (a Mean-AcT fit: ``β = m_b − m_a``
    already), every unit ``ω = 1`` on support ``all``, tagged ``baseline=mean_difference``.

    Raises ValueError for maps of other methods: their ``β`` is not a mean difference
    (Linear-AcT stores ``β = m_b − ω m_a``); fit with ``method="mean"`` first."""
    if not isinstance(tmap, TransportMap):
        raise TypeError(f"expected a TransportMap, got {type(tmap).__name__}")
    wrong = sorted({t.method for t in tmap.maps.values() if t.method != "mean"})
    if wrong:
        raise ValueError(f"a mean-difference vector needs a Mean-AcT fit (β = m_b − m_a); this map's method is "
                         f"{', '.join(wrong)}: fit it with method='mean'")
    out = TransportMap(meta={**tmap.meta, "baseline": "mean_difference", "default_support": "all"})
    for name, t in tmap.maps.items():
        unit = UnitTransport(omega=torch.ones_like(t.omega), beta=t.beta.clone(), bands=t.bands.clone(),
                             flags=torch.zeros_like(t.flags), method="mean", default_support="all")
        out.add(name, unit, layout=tmap.layouts.get(name, "auto"), output_index=tmap.output_index.get(name))
    return out


# -- Normalized Attention Guidance --------------------------------------------------------------


def nag_combine(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float = NAG_TAU,
                alpha: float = NAG_ALPHA) -> torch.Tensor:
    """NAG on attention outputs ``(..., C)`` (norms over the last axis, per token); see the module
    docstring. ``scale = 1`` or ``alpha = 0`` returns ``z_pos`` (a copy)."""
    for name, v in (("scale", scale), ("tau", tau), ("alpha", alpha)):
        if not math.isfinite(float(v)):
            raise ValueError(f"NAG {name} must be a finite number, got {v!r}")
    if tau <= 0:
        raise ValueError(f"NAG tau must be positive (the largest allowed L1-norm ratio), got {tau}")
    if z_pos.shape != z_neg.shape:
        raise ValueError(f"positive and negative attention outputs differ in shape: {tuple(z_pos.shape)} vs "
                         f"{tuple(z_neg.shape)}")
    z_tilde = scale * z_pos - (scale - 1.0) * z_neg
    n_pos = z_pos.abs().sum(-1, keepdim=True)
    n_tilde = z_tilde.abs().sum(-1, keepdim=True)
    ratio = n_tilde / n_pos.clamp_min(torch.finfo(z_pos.dtype).tiny)
    # rescale only where the ratio exceeds tau (min(r, τ)/r = 1 below it, also for r = 0)
    factor = torch.where(ratio > tau, tau / ratio.clamp_min(torch.finfo(z_pos.dtype).tiny),
                         torch.ones_like(ratio))
    return alpha * (z_tilde * factor) + (1.0 - alpha) * z_pos


class NAGAttnProcessor:
    """A diffusers cross-attention processor computing NAG against fixed negative embeddings.

    ``negative``: ``(n, T, C)`` encoder hidden states of the negative prompt(s): one for every
    image, or one per image (repeated when CFG doubles the batch). Plain scaled-dot-product attention otherwise (the processor for SDXL-family
    ``attn2`` layers: no group/spatial norm, no cross norm, no attention mask)."""

    def __init__(self, negative: torch.Tensor, scale: float, tau: float = NAG_TAU, alpha: float = NAG_ALPHA):
        if negative.ndim != 3:
            raise ValueError(f"negative embeddings must be (batch, tokens, channels), got {tuple(negative.shape)}")
        nag_combine(torch.ones(1, 1), torch.ones(1, 1), scale, tau, alpha)  # checks the numbers
        self.negative, self.scale, self.tau, self.alpha = negative, float(scale), float(tau), float(alpha)

    @staticmethod
    def _attend(attn, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = query.shape[0]
        key, value = attn.to_k(context), attn.to_v(context)
        d = key.shape[-1] // attn.heads
        q = query.view(b, -1, attn.heads, d).transpose(1, 2)
        k = key.view(b, -1, attn.heads, d).transpose(1, 2)
        v = value.view(b, -1, attn.heads, d).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        z = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        return z.transpose(1, 2).reshape(b, -1, attn.heads * d).to(query.dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("NAG acts on cross-attention (attn2) only; this layer was called without encoder states")
        if attention_mask is not None or attn.group_norm is not None or attn.spatial_norm is not None or attn.norm_cross:
            raise ValueError("NAGAttnProcessor supports plain cross-attention only (no attention mask, group norm, "
                             "spatial norm or cross norm)")
        residual = hidden_states
        shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
        if shape4 is not None:
            b, c, h, w = shape4
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        b = hidden_states.shape[0]
        neg = self.negative.to(device=encoder_hidden_states.device, dtype=encoder_hidden_states.dtype)
        if b % neg.shape[0]:
            raise ValueError(f"{neg.shape[0]} negative embeddings for a batch of {b}: give 1, or one per image")
        neg = neg.repeat(b // neg.shape[0], 1, 1)  # with CFG the batch is [unconditional; conditional]
        query = attn.to_q(hidden_states)
        z = nag_combine(self._attend(attn, query, encoder_hidden_states), self._attend(attn, query, neg),
                        self.scale, self.tau, self.alpha)
        out = attn.to_out[1](attn.to_out[0](z))
        if shape4 is not None:
            out = out.transpose(-1, -2).reshape(shape4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_names(unet) -> list:
    """Processor keys of the UNet's cross-attention layers (``…attn2.processor``)."""
    return [k for k in unet.attn_processors if k.endswith("attn2.processor")]


@torch.no_grad()
def encode_negative(pipe, negative_prompt: Union[str, Sequence[str]]) -> torch.Tensor:
    """``(n, 77, C)`` prompt embeddings of the negative prompt(s), as the pipeline encodes prompts."""
    prompts = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    if not prompts or any(not str(p).strip() for p in prompts):
        raise ValueError("empty negative prompt: NAG needs the text of what to steer away from")
    emb = pipe.encode_prompt(prompts, device=pipe.unet.device, num_images_per_prompt=1,
                             do_classifier_free_guidance=False)[0]
    return emb


@contextlib.contextmanager
def nag(pipe, negative_prompt: Union[str, Sequence[str]], scale: float, tau: float = NAG_TAU,
        alpha: float = NAG_ALPHA) -> Iterator[Dict[str, NAGAttnProcessor]]:
    """``with nag(pipe, "a circle", scale=3): pipe(...)`` — NAG on every ``attn2`` of ``pipe.unet``.

    Made for CFG-free sampling (guidance 0/1, the few-step regime); with CFG every row of the
    UNet batch, the unconditional half too, is guided. One negative prompt for all images, or one per image. The UNet's
    previous processors are put back on leaving the block (also after an exception)."""
    names = cross_attention_names(pipe.unet)
    if not names:
        raise ValueError("this UNet has no cross-attention (attn2) layers for NAG")
    negative = encode_negative(pipe, negative_prompt)
    saved = dict(pipe.unet.attn_processors)
    procs = {k: NAGAttnProcessor(negative, scale, tau, alpha) for k in names}
    pipe.unet.set_attn_processor({k: procs.get(k, v) for k, v in saved.items()})
    try:
        yield procs
    finally:
        pipe.unet.set_attn_processor(dict(saved))


__all__ = ["mean_difference_unit", "mean_difference_map", "nag_combine", "NAGAttnProcessor", "nag",
           "cross_attention_names", "encode_negative", "NAG_TAU", "NAG_ALPHA"]
