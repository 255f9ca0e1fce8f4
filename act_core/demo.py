"""The embedded demo: fit and steer a small transformer built from a config (no download).

Two "prompt sets" are token sequences drawn from two disjoint halves of the vocabulary.
A Linear-AcT map is fitted on every layer norm of a tiny Llama, saved, reloaded and
applied; the demo prints how far the steered source activations are from the target
distribution at λ = 0, 0.5, 1 (a 1-D Wasserstein distance between pooled activations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .fitting import fit_map
from .hooks import ActivationCollector, run_until_stop, steer
from .mapfile import TransportMap


class TokenRunner:
    """Runner over lists of token-id lists for any HF-style model taking ``input_ids``."""

    def __init__(self, model: torch.nn.Module, architecture: str, batch_size: int = 16):
        self.model, self.architecture, self.batch_size = model, architecture, batch_size

    @torch.no_grad()
    def run(self, inputs: Sequence[Sequence[int]], collector: ActivationCollector) -> None:
        for i in range(0, len(inputs), self.batch_size):
            ids = torch.tensor(inputs[i : i + self.batch_size])
            collector.attention_mask = torch.ones_like(ids)
            run_until_stop(self.model, input_ids=ids)


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over units of the 1-D W1 distance between two sample sets (equal sizes)."""
    return (a.sort(0).values - b.sort(0).values).abs().mean().item()


def build_tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def run_demo(out: str = "act-demo", seed: int = 0) -> dict:
    model = build_tiny_llama(seed)
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(0, 64, (96, 12), generator=g).tolist()
    target = torch.randint(64, 128, (96, 12), generator=g).tolist()
    runner = TokenRunner(model, "LlamaForCausalLM/tiny-demo")
    tmap = fit_map(runner, source, target, r"model\.layers\.\d+\.post_attention_layernorm", method="linear",
                   procedure="causal", support="all")
    Path(out).mkdir(parents=True, exist_ok=True)
    path = tmap.save(Path(out) / "demo_map.safetensors")
    tmap = TransportMap.load(path)
    last = tmap.modules[-1]
    tgt = _pooled(runner, target, last)
    rows = {}
    for lam in (0.0, 0.5, 1.0):
        with steer(model, tmap, strength=lam):
            rows[lam] = wasserstein_1d(_pooled(runner, source, last), tgt)
    print(f"fitted {len(tmap)} modules ({sum(t.units for t in tmap.maps.values())} units), saved {path}")
    print(f"distance of steered source to target at {last} (1-D W1, mean over units):")
    for lam, d in rows.items():
        print(f"  λ = {lam:.1f}: {d:.4f}")
    return rows


def _pooled(runner, inputs, name):
    col = ActivationCollector(runner.model, [name], pooling="mean", stop_after=True)
    with col:
        runner.run(inputs, col)
    return col.take()[name]
