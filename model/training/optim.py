"""Adagrad with (Nesterov) momentum that updates only the rows a sparse gradient touches.

GRU4Rec's reference trains with Adagrad plus momentum, and its item tables (input embedding, output
weights and biases) receive gradients for a few hundred or thousand rows per step: updating, or even
reading, all 40k rows every step would cost more than the model itself. Sparse gradients (from
`F.embedding(..., sparse=True)`) are coalesced and applied to their rows only; the accumulators of untouched
rows do not move, as in the reference's indexed updates.

    acc += g²      u = g / sqrt(acc + eps)
    momentum 0:    p -= lr u
    momentum μ:    v = μ v - lr u;  p += μ v - lr u      (Nesterov; p += v when nesterov=False)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdagradM(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 0.05,
        momentum: float = 0.0,
        eps: float = 1e-6,
        nesterov: bool = True,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, mu, eps, nesterov = group["lr"], group["momentum"], group["eps"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["acc"] = torch.zeros_like(p)
                    if mu > 0:
                        state["vel"] = torch.zeros_like(p)
                g = p.grad
                if g.is_sparse:
                    g = g.coalesce()
                    rows, values = g.indices()[0], g.values()
                    acc = state["acc"].index_select(0, rows).add_(values * values)
                    state["acc"].index_copy_(0, rows, acc)
                    upd = values / (acc + eps).sqrt()
                    if mu > 0:
                        vel = state["vel"].index_select(0, rows).mul_(mu).sub_(upd, alpha=lr)
                        state["vel"].index_copy_(0, rows, vel)
                        delta = vel * mu - upd * lr if nesterov else vel
                    else:
                        delta = upd.mul_(-lr)
                    p.index_add_(0, rows, delta)
                else:
                    acc = state["acc"].addcmul_(g, g)
                    upd = g / (acc + eps).sqrt()
                    if mu > 0:
                        vel = state["vel"].mul_(mu).sub_(upd, alpha=lr)
                        p.add_(vel * mu - upd * lr if nesterov else vel)
                    else:
                        p.sub_(upd, alpha=lr)
