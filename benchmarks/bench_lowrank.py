"""Chapter 1: the best rank-r approximation against the truncated SVDs a reader could use instead.

``best_rank_r(W, 16)`` of a 1024×1024 float32 matrix computes a full SVD (LAPACK through
``torch.linalg.svd``) and keeps 16 triplets: exact, the Eckart–Young optimum. The two peers compute
only the 16 leading triplets, timed interleaved with it (2 threads):

* ``scipy.sparse.linalg.svds(W, k=16)`` — ARPACK's Lanczos iteration, exact up to its tolerance;
* ``torch.svd_lowrank(W, q=16 + 10, niter=2)`` — the randomized range finder (Halko et al.
  2011), approximate: faster, with a Frobenius error above the optimum.

Two matrices: a Gaussian one (flat spectrum, the hard case for both iterative methods) and one
with a decaying spectrum σ_i = i^(−1) plus noise (closer to a trained weight). Figures: the time
of ``best_rank_r`` divided by each peer's (per-repeat ratio; > 1: the peer is faster) and, in the
note, each peer's error ‖W − W̃‖_F relative to the optimum ‖W − W_r‖_F. No targets: which method to
use is a trade of time against exactness, and the table only shows its terms on this machine.
The comparison with the full ``torch.linalg.svd`` that ``best_rank_r`` contains is not shown: it
can only be slower.
"""

from __future__ import annotations

import torch

from benchmarks.common import Result, interleaved_times, median_ms, ratios
from lora_edu.lowrank import best_rank_r

SIZE = 1024
RANK = 16
OVERSAMPLE = 10


def _matrices() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(SIZE, SIZE, generator=g)
    u, _ = torch.linalg.qr(torch.randn(SIZE, SIZE, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(SIZE, SIZE, generator=g, dtype=torch.float64))
    sigma = 1.0 / torch.arange(1, SIZE + 1, dtype=torch.float64)
    decaying = (u * sigma) @ v.T + 1e-3 * torch.randn(SIZE, SIZE, generator=g,
                                                      dtype=torch.float64)
    return {"Gaussian": gaussian, "1/i spectrum": decaying.float()}


def run() -> list[Result]:
    from scipy.sparse.linalg import svds

    rows = []
    for label, W in _matrices().items():
        Wn = W.numpy()

        def scipy_svds(Wn=Wn):
            u, s, vt = svds(Wn, k=RANK, random_state=0)
            return torch.from_numpy((u * s) @ vt)

        def randomized(W=W):
            u, s, v = torch.svd_lowrank(W, q=RANK + OVERSAMPLE, niter=2)
            return (u[:, :RANK] * s[:RANK]) @ v[:, :RANK].T

        fns = {"best_rank_r": lambda W=W: best_rank_r(W, RANK), "svds": scipy_svds,
               "svd_lowrank": randomized}
        torch.manual_seed(0)                 # svd_lowrank draws its test matrix from torch's RNG
        errors = {k: float(torch.linalg.matrix_norm(W - fn())) for k, fn in fns.items()}
        times = interleaved_times(fns, repeat=5, warmup=1)
        for peer, name in (("svds", "scipy svds (ARPACK)"),
                           ("svd_lowrank", f"torch.svd_lowrank q={RANK + OVERSAMPLE} niter=2")):
            rows.append(Result.from_samples(
                f"best_rank_r / {peer} (r={RANK}, {SIZE}^2, {label})",
                ratios(times, "best_rank_r", peer),
                f"{name} = {median_ms(times[peer])}",
                note=f"its error / optimum = {errors[peer] / errors['best_rank_r']:.4f}; "
                     f"best_rank_r = {median_ms(times['best_rank_r'])}"))
    return rows
