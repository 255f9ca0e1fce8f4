"""Fused steering: folding a fixed-λ map into weights equals the hooked path, and is reversible."""

import pytest
import torch

from act_core import TransportMap, count_hooks, fit_transport, steer
from act_core.bake import BakeError, bake, plan_bake


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.gn = torch.nn.GroupNorm(2, 8)
        self.lin = torch.nn.Linear(8, 6)
        self.ln = torch.nn.LayerNorm(6)

    def forward(self, x):
        h = self.gn(self.conv(x))
        return self.ln(self.lin(h.mean((2, 3))))


def fitted(d, rng, method="linear"):
    return fit_transport(torch.randn(64, d, generator=rng), torch.randn(64, d, generator=rng) * 0.5 + 1, method, support="all")


def test_bake_equals_hooks_and_restores_bit_exact(rng):
    net = ConvNet()
    x = torch.randn(2, 3, 5, 5)
    before = net(x)
    params = {k: v.clone() for k, v in net.state_dict().items()}
    tmap = TransportMap()
    tmap.add("conv", fitted(8, rng), "per_pixel")
    tmap.add("gn", fitted(8, rng, "mean"), "spatial_mean")  # ω = 1: a constant shift, foldable
    tmap.add("lin", fitted(6, rng), "tokens")
    tmap.add("ln", fitted(6, rng), "tokens")
    for lam in (1.0, 0.4, -0.5):
        with steer(net, tmap, strength=lam, support="all"):
            hooked = net(x)
        with bake(net, tmap, strength=lam, support="all"):
            assert count_hooks(net) == 0
            baked = net(x)
        assert torch.allclose(baked, hooked, atol=1e-5), lam
        assert not torch.allclose(baked, before)
        for k, v in net.state_dict().items():
            assert torch.equal(v, params[k]), k
    assert torch.equal(net(x), before)


def test_gpt2_conv1d_and_layernorm_fold(rng):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)).eval()
    ids = torch.randint(0, 64, (2, 7))
    tmap = TransportMap()
    for i in range(2):
        tmap.add(f"transformer.h.{i}.ln_2", fitted(32, rng), "tokens")
        tmap.add(f"transformer.h.{i}.attn.c_proj", fitted(32, rng), "tokens")
    with steer(model, tmap, strength=1.0, support="all"):
        hooked = model(input_ids=ids).logits
    with bake(model, tmap, strength=1.0, support="all"):
        baked = model(input_ids=ids).logits
    assert torch.allclose(baked, hooked, atol=1e-4)


def test_bake_refuses_inexact_cases_and_changes_nothing(rng):
    net = ConvNet()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    band = TransportMap()
    band.add("lin", fitted(6, rng), "tokens")
    with pytest.raises(BakeError, match="band"):
        bake(net, band, strength=1.0, support="q_0_100")
    spatial = TransportMap()
    spatial.add("ln", fitted(6, rng), "tokens")
    spatial.add("gn", fitted(8, rng), "spatial_mean")
    with pytest.raises(BakeError, match="gn: the spatial-mean shift"):
        bake(net, spatial, strength=1.0, support="all")
    rms = torch.nn.Sequential(torch.nn.RMSNorm(6))
    nob = TransportMap()
    nob.add("0", fitted(6, rng), "tokens")
    with pytest.raises(BakeError, match="no bias"):
        plan_bake(rms, nob, 1.0, support="all")
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])
