"""A tiny residual stack (torch only) and its runner, for fitting tests that need fresh processes.

``TinyStack``: embedding -> ``blocks`` (a ModuleList; each block ``h + tanh(fc(norm(h)))``) ->
``out_norm``: the shape of a transformer's layer loop, in a few thousand parameters, so a
``torchrun`` worker starts in about a second (no transformers import).
"""

from __future__ import annotations

import torch

from act_core import run_until_stop

PATTERN = r"blocks\.\d+\.norm|out_norm"


class Block(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.fc = torch.nn.Linear(d, d)

    def forward(self, h):
        return h + torch.tanh(self.fc(self.norm(h)))


class TinyStack(torch.nn.Module):
    def __init__(self, d: int = 16, depth: int = 4, vocab: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(Block(d) for _ in range(depth))
        self.out_norm = torch.nn.LayerNorm(d)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.3)

    def forward(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            h = b(h)
        return self.out_norm(h)


class StackRunner:
    """Inputs are token-id lists of one length; ``fail`` = (rank, batch) raises there;
    ``on_batch(count)`` is called before every batch (tests stop a fit there)."""

    def __init__(self, model, batch_size: int = 4, fail=None, on_batch=None):
        self.model, self.architecture, self.batch_size, self.fail = model, "tiny-stack", batch_size, fail
        self.on_batch = on_batch
        self.batches = 0

    @torch.no_grad()
    def run(self, inputs, collector):
        import torch.distributed as dist

        for i in range(0, len(inputs), self.batch_size):
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(self.batches)
            if self.fail is not None and dist.is_initialized() and (dist.get_rank(), self.batches) == tuple(self.fail):
                raise RuntimeError(f"boom on rank {dist.get_rank()}")
            ids = torch.tensor(inputs[i:i + self.batch_size])
            collector.attention_mask = torch.ones_like(ids)
            run_until_stop(self.model, ids)


def data(n: int = 24, length: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(0, 32, (n, length), generator=g).tolist()
    target = torch.randint(24, 64, (n, length), generator=g).tolist()
    return source, target
