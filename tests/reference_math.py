"""An independent re-statement of the reference's Linear-AcT estimator (ml-act.md §1.3, §1.4).

Written from the description, not copied: sort each unit in float32, then ordinary least
squares in float64 numpy on the centred sorted samples; bands with torch.quantile (float32).
The reference's 1e-8 jitter is left out (it only matters for constant units).
"""

import numpy as np
import torch


def reference_linear(src: torch.Tensor, dst: torch.Tensor):
    assert len(src) == len(dst)
    a = torch.sort(src.to(torch.float32), dim=0).values.numpy().astype(np.float64)
    b = torch.sort(dst.to(torch.float32), dim=0).values.numpy().astype(np.float64)
    ma, mb = a.mean(0), b.mean(0)
    ac, bc = a - ma, b - mb
    w = (ac * bc).sum(0) / (ac * ac).sum(0)
    off = mb - w * ma
    return torch.from_numpy(w).float(), torch.from_numpy(off).float()


def reference_bands(src: torch.Tensor, lo_pct: float, hi_pct: float):
    q = torch.tensor([lo_pct / 100.0, hi_pct / 100.0])
    r = torch.quantile(src.to(torch.float32), q, dim=0)
    return r[0], r[1]


def reference_apply(z, w, b, lo, hi, lam):
    """The reference's float32 order: t = z*w + b; t = λt + (1-λ)z; out = m t + (1-m) z."""
    t = z * w + b
    t = lam * t + (1 - lam) * z
    m = ((lo < z) & (z < hi)).float()
    return m * t + (1 - m) * z
