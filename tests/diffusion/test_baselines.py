"""Baselines beside AcT: mean-difference steering vectors and Normalized Attention Guidance (NAG)."""

import numpy as np
import pytest
import torch

from act_core.diffusion import baselines as B
from act_core.mapfile import TransportMap
from act_core.transport import UnitTransport


# -- mean-difference vectors ---------------------------------------------------------------------


def test_mean_difference_unit_is_the_difference_of_means_at_any_scale():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(200, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 1.0, -1.0])
    tgt = torch.randn(150, 3, generator=g) * 3.0 + torch.tensor([2.0, -1.0, 0.5])
    u = B.mean_difference_unit(src, tgt)
    delta = tgt.double().mean(0) - src.double().mean(0)
    assert torch.equal(u.omega, torch.ones(3)) and u.default_support == "all"
    assert torch.allclose(u.beta.double(), delta, atol=1e-6)
    x = torch.randn(5, 7, 3, generator=g) * 10  # far outside the source's range: still shifted
    for s in (0.5, 1.0, 4.0):
        assert torch.allclose(u.apply(x, s), x + s * delta.float(), atol=1e-5)
    assert torch.equal(u.apply(x, 0.0), x)


def _unit(omega, beta, method):
    d = len(omega)
    bands = torch.stack([torch.full((d,), -1.0), torch.full((d,), 1.0)]).expand(9, 2, d).clone()
    return UnitTransport(omega=torch.tensor(omega), beta=torch.tensor(beta), bands=bands,
                         flags=torch.zeros(d, dtype=torch.uint8), method=method)


def test_mean_difference_map_keeps_modules_and_drops_the_support():
    m = TransportMap(meta={"method": "mean", "style": "x"})
    m.add("unet.a", _unit([1.0, 1.0], [0.5, -2.0], "mean"), layout="spatial_mean")
    m.add("text_encoder.b", _unit([1.0], [3.0], "mean"))
    v = B.mean_difference_map(m)
    assert v.modules == ["unet.a", "text_encoder.b"] and v.layouts["unet.a"] == "spatial_mean"
    assert v.meta["baseline"] == "mean_difference" and v.meta["style"] == "x"
    assert torch.equal(v["unet.a"].beta, torch.tensor([0.5, -2.0]))
    assert v["unet.a"].default_support == "all"
    x = torch.full((1, 2, 3, 3), 100.0)  # outside every band of the Mean-AcT map: the vector still acts
    assert torch.allclose(v["unet.a"].apply(x, 2.0), x + torch.tensor([1.0, -4.0]).view(1, 2, 1, 1))


def test_mean_difference_map_refuses_a_linear_fit():
    m = TransportMap()
    m.add("unet.a", _unit([0.5], [1.0], "linear"))
    with pytest.raises(ValueError, match="method='mean'"):
        B.mean_difference_map(m)
    with pytest.raises(TypeError):
        B.mean_difference_map({"unet.a": None})


# -- NAG -------------------------------------------------------------------------------------------


def test_nag_combine_known_answers():
    zp = torch.tensor([[1.0, 1.0, 0.0]])
    zn = torch.tensor([[0.0, 1.0, 1.0]])
    # s = 2: Z~ = 2 Z+ - Z- = [2, 1, -1]; |Z~|1 = 4, |Z+|1 = 2, r = 2 < tau = 2.5: no rescale
    out = B.nag_combine(zp, zn, scale=2.0, tau=2.5, alpha=0.5)
    assert torch.allclose(out, 0.5 * torch.tensor([[2.0, 1.0, -1.0]]) + 0.5 * zp)
    # s = 4: Z~ = [4, 1, -3], r = 8/2 = 4 > tau = 2: Z~ * 2/4
    out = B.nag_combine(zp, zn, scale=4.0, tau=2.0, alpha=1.0)
    assert torch.allclose(out, torch.tensor([[2.0, 0.5, -1.5]]))
    assert torch.allclose(out.abs().sum(-1), 2.0 * zp.abs().sum(-1))  # the L1 ratio is capped at tau
    # off switches
    assert torch.equal(B.nag_combine(zp, zn, scale=1.0), zp)
    assert torch.equal(B.nag_combine(zp, zn, scale=5.0, alpha=0.0), zp)
    assert torch.equal(B.nag_combine(zp, zp.clone(), scale=5.0), zp)  # negative == positive: nothing to push


def test_nag_combine_rejects_bad_numbers():
    z = torch.ones(1, 2)
    with pytest.raises(ValueError, match="tau must be positive"):
        B.nag_combine(z, z, 2.0, tau=0.0)
    with pytest.raises(ValueError, match="finite"):
        B.nag_combine(z, z, float("nan"))
    with pytest.raises(ValueError, match="differ in shape"):
        B.nag_combine(z, torch.ones(1, 3), 2.0)


@pytest.fixture(scope="module")
def tiny():
    from diffusers_helpers import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline()


def _images(pipe, **kw):
    return np.asarray(pipe(prompt=["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=0.0,
                           height=32, width=32, output_type="np", generator=torch.Generator().manual_seed(0),
                           **kw).images)


def test_nag_processor_matches_plain_attention_when_off_and_restores_the_unet(tiny):
    from diffusers.models.attention_processor import Attention

    attn = next(m for n, m in tiny.unet.named_modules() if n.endswith("attn2") and isinstance(m, Attention))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, attn.query_dim, generator=g)
    ctx = torch.randn(2, 77, 80, generator=g)
    plain = attn(x, encoder_hidden_states=ctx)
    neg = torch.randn(1, 77, 80, generator=g)
    assert torch.allclose(B.NAGAttnProcessor(neg, scale=1.0)(attn, x, ctx), plain, atol=1e-6)
    assert torch.allclose(B.NAGAttnProcessor(ctx, scale=4.0)(attn, x, ctx), plain, atol=1e-6)
    assert not torch.allclose(B.NAGAttnProcessor(neg, scale=4.0)(attn, x, ctx), plain, atol=1e-4)
    with pytest.raises(ValueError, match="one per image"):
        B.NAGAttnProcessor(torch.randn(3, 77, 80), 2.0)(attn, x, ctx)

    before = _images(tiny)
    saved = {k: type(v) for k, v in tiny.unet.attn_processors.items()}
    with B.nag(tiny, "a red circle", scale=4.0) as procs:
        assert set(procs) == set(B.cross_attention_names(tiny.unet)) and procs
        steered = _images(tiny)
    assert {k: type(v) for k, v in tiny.unet.attn_processors.items()} == saved
    assert np.array_equal(_images(tiny), before)  # put back exactly
    assert not np.allclose(steered, before)
    with B.nag(tiny, "a red circle", scale=1.0):  # scale 1 = plain attention, image for image
        assert np.allclose(_images(tiny), before, atol=1e-5)


def test_nag_context_restores_after_an_error_and_refuses_empty_prompts(tiny):
    saved = {k: type(v) for k, v in tiny.unet.attn_processors.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with B.nag(tiny, "a square", scale=3.0):
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in tiny.unet.attn_processors.items()} == saved
    with pytest.raises(ValueError, match="empty negative prompt"):
        with B.nag(tiny, " ", scale=3.0):
            pass
