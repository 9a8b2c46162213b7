#!/usr/bin/env python3
"""Time one training step of SF-MoE as the authors' code computes it, in PyTorch, for comparison with
`sfmoe bench step`. Written from ../shared/reference/sfmoe-spec.md (no code copied): timm's DeiT-S distilled
(D 384, 12 blocks, 6 heads, two heads averaged) with lucidrains' top-2 GShard MoE at blocks 5 and 11 (E = 4,
'random' second policy, capacity 1.25 per image, dense one-hot dispatch and combine tensors of shape
[B, N, E, C], einsum experts), CE + aux loss, torch.optim.Adam.

Usage: /usr/bin/python3 bench/authors_step.py [--threads 2] [--batch 8] [--repeats 5] [--json]
Needs Debian's python3-torch (and libopenblas0-pthread for a realistic BLAS).
"""
import argparse, json, math
import torch
from steptime import median_ms, blas
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class DenseDispatchMoE(nn.Module):
    """lucidrains' Top2Gating + experts as the authors vendored it (spec §3.3), per-image capacity."""

    def __init__(self, dim, hidden, experts, cf_train=1.25, cf_eval=2.0, threshold=0.2):
        super().__init__()
        self.e = experts
        self.w_gating = nn.Parameter(torch.randn(dim, experts))
        self.w1 = nn.Parameter(torch.empty(experts, dim, hidden).uniform_(-hidden ** -0.5, hidden ** -0.5))
        self.w2 = nn.Parameter(torch.empty(experts, hidden, dim).uniform_(-dim ** -0.5, dim ** -0.5))
        self.cf_train, self.cf_eval, self.threshold = cf_train, cf_eval, threshold

    def forward(self, x):
        b, n, d = x.shape
        e = self.e
        raw = torch.einsum('bnd,de->bne', x, self.w_gating).softmax(dim=-1)
        g1, i1 = raw.max(dim=-1)
        m1 = F.one_hot(i1, e).float()
        g2, i2 = (raw * (1.0 - m1)).max(dim=-1)
        m2 = F.one_hot(i2, e).float()
        denom = g1 + g2 + 1e-9
        g1, g2 = g1 / denom, g2 / denom
        loss = (raw.mean(dim=-2) * m1.mean(dim=-2)).mean() * e * e
        u = torch.rand_like(g2)
        m2 = m2 * (u < g2 / max(self.threshold, 1e-9)).float().unsqueeze(-1)
        cf = self.cf_train if self.training else self.cf_eval
        c = max(min(n, int((n * cf) / e)), 4)
        p1 = (torch.cumsum(m1, dim=-2) - m1) * m1
        m1 = m1 * (p1 < c).float()
        m1_count = m1.sum(dim=-2, keepdim=True)
        m1_flat = m1.sum(dim=-1)
        p1 = p1.sum(dim=-1)
        g1 = g1 * m1_flat
        p2 = (torch.cumsum(m2, dim=-2) - m2 + m1_count) * m2
        m2 = m2 * (p2 < c).float()
        m2_flat = m2.sum(dim=-1)
        p2 = p2.sum(dim=-1)
        g2 = g2 * m2_flat
        oh = lambda p: F.one_hot(p.long().clamp(max=c), c + 1)[..., :c].float()
        combine = (g1[..., None, None] * F.one_hot(i1, e).float()[..., None] * oh(p1)[..., None, :]
                   + g2[..., None, None] * F.one_hot(i2, e).float()[..., None] * oh(p2)[..., None, :])
        dispatch = (combine != 0).float()
        xin = torch.einsum('bnd,bnec->ebcd', x, dispatch).reshape(e, b * c, d)
        h = F.gelu(torch.einsum('end,edh->enh', xin, self.w1))
        yout = torch.einsum('enh,ehd->end', h, self.w2).reshape(e, b, c, d)
        return torch.einsum('ebcd,bnec->bnd', yout, combine), loss * 1e-2


class Block(nn.Module):
    def __init__(self, dim, heads, sparse):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DenseDispatchMoE(dim, dim * 4, 4) if sparse else Mlp(dim, dim * 4)
        self.sparse = sparse

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        if self.sparse:
            y, aux = self.mlp(self.norm2(x))
            return x + y, aux
        return x + self.mlp(self.norm2(x)), None


class SfMoeDeitS(nn.Module):
    def __init__(self, classes=1000, dim=384, depth=12, heads=6, pattern="FFFFFSFFFFFS"):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 198, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, c == "S") for c in pattern])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        self.head_dist = nn.Linear(dim, classes)

    def forward(self, x):
        b = x.shape[0]
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(b, -1, -1), self.dist.expand(b, -1, -1), x], dim=1) + self.pos
        aux = 0.0
        for blk in self.blocks:
            x, a = blk(x)
            if a is not None:
                aux = aux + a
        x = self.norm(x)
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2, aux


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pattern", default="FFFFFSFFFFFS")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = SfMoeDeitS(pattern=a.pattern)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x = torch.randn(a.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (a.batch,))

    def step():
        logits, aux = model(x)
        loss = F.cross_entropy(logits, y) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()

    r = {"step_ms": median_ms(step, a.warmup, a.repeats), "torch": torch.__version__, "threads": a.threads, "batch": a.batch,
         "blas": blas()}
    print(json.dumps(r) if a.json else f"authors' SF-MoE step (PyTorch {r['torch']}): {r['step_ms']:.1f} ms median, batch {a.batch}, {a.threads} threads")


if __name__ == "__main__":
    main()
