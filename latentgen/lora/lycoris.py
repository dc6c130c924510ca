"""One module's update from a LoRA file, in the one form the adapters take: dW = (alpha / rank) * up @ down.

Kohya's LoRA and LoCon give ``up`` and ``down`` directly. The LyCORIS family (KohakuBlueleaf's LyCORIS; A1111 reads
it in ``extensions-builtin/Lora``) stores other factorizations, and each is rewritten here as such a product,
exactly (by algebra, not by a fitted approximation). W's shape is (out, in, *kernel); n = in * prod(kernel) is its
width once flattened, and U (out, R), V (R, n) are the factors: up = U, down = V reshaped to (R, in, *kernel).

  * LoHa (FedPara, Hyeon-Woo et al. 2022, https://arxiv.org/abs/2108.06098): dW = (A1 B1) * (A2 B2), elementwise.
    The Hadamard product of rank r1 and r2 products is one of rank r1 r2 (the Khatri-Rao identity):
    (A1 B1) * (A2 B2) = U V with U[:, (i, j)] = A1[:, i] * A2[:, j] and V[(i, j)] = B1[i] * B2[j].
  * LoKr (Yeh et al. 2023, https://arxiv.org/abs/2309.14859): dW = kron(w1, w2), each half whole or a product
    (w1a w1b); kron(U1 V1, U2 V2) = kron(U1, U2) kron(V1, V2). A convolution's w2 (c, d, *kernel) enters
    flattened to (c, d * prod(kernel)): that is the order in which kron(w1, w2) fills the flattened weight.
  * Tucker cores (``hada_t1``/``hada_t2``, ``lokr_t2``, LoCon's ``lora_mid``): a core t (r, r, *kernel) between
    wa (r, out) and wb (r, in) is the product wa^T V with V[i] = sum_j t[i, j] wb[j] (an einsum), rank r.
  * DoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353) on any of these: a magnitude m (kohya's
    ``dora_scale``, peft's ``lora_magnitude_vector``) rescales the merged weight, W' = m * (W + dW) / ||W + dW||,
    the norm per output row (m (out, 1, ...): LyCORIS's default, peft) or per input channel (m (1, in, ...):
    LyCORIS's ``wd_on_output=False``, A1111's reading). That is no sum of weights: its update W' - W, computed
    against the module's weight W when the file loads, is used whole, and a weight s gives W + s (W' - W) (as
    ComfyUI weighs it; LyCORIS's own multiplier, which keeps dW at 0, and peft's, inside the norm, differ).
Where R would reach min(out, n), dW itself is the factor beside an identity. The file's scale is folded into up
and alpha = R, so the adapters' alpha / rank is exactly 1. The scales are A1111's: ``scale`` if the file has it,
else alpha / dim with dim the rank of the low-rank half (LoHa's w1b, LoKr's w1b or w2b), else 1 (LoKr with both
halves whole). LyCORIS's other kinds (full, IA3, OFT/BOFT, GLoRA, norm) are refused by name.
"""

from __future__ import annotations

import math

import torch

KINDS = {"diff": "full (weight differences)", "diff_b": "full (bias differences)", "weight": "IA3",
         "on_input": "IA3", "oft_blocks": "OFT", "oft_diag": "OFT", "boft_blocks": "BOFT", "w_norm": "norm",
         "b_norm": "norm", "a1": "GLoRA", "a2": "GLoRA", "b1": "GLoRA", "b2": "GLoRA",
         "bias": "bias", "lokr_t1": "LoKr with a Tucker w1"}
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
PLAIN = ("lora_down", "lora_up", "lora_mid", "lora_A", "lora_B")
DORA = ("dora_scale", "lora_magnitude_vector")  # kohya's (LyCORIS, OneTrainer) and peft's names of DoRA's m


class Mismatch(ValueError):
    """The update's shape is not the module's (a file made for another architecture)."""


class Missing(ValueError):
    """A plain LoRA module without its up or its down weight (reported, the rest of the file loads)."""


def kind(g: dict) -> str:
    """What a module's keys ({suffix: tensor}, suffixes such as "lora_down", "hada_w1_a", "alpha") hold: "lora",
    "loha" or "lokr"; ValueError naming LyCORIS's kind for the others."""
    odd = [k for k in g if k not in (*LOHA, "hada_t1", "hada_t2", *LOKR, *PLAIN, *DORA, "alpha", "scale")]
    if odd:
        raise ValueError(f"{odd[0]!r} is LyCORIS's {KINDS.get(odd[0], 'unknown kind')}, which latentgen does not "
                         f"read: it reads LoRA, LoCon, LoHa and LoKr files, DoRA or not.")
    if any(k.startswith("hada_") for k in g):
        missing = [k for k in LOHA if k not in g]
        if missing:
            raise ValueError(f"a LoHa module without {', '.join(missing)} (a damaged file).")
        return "loha"
    if any(k.startswith("lokr_") for k in g):
        if "lokr_w1" not in g and not {"lokr_w1_a", "lokr_w1_b"} <= set(g) or \
                "lokr_w2" not in g and not {"lokr_w2_a", "lokr_w2_b"} <= set(g):
            raise ValueError("a LoKr module without its w1 or w2 (a damaged file).")
        return "lokr"
    return "lora"


def update(g: dict, shape: tuple, alpha: float | None = None,
           weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down (R, in, *kernel), up (out, R[, 1, 1]), alpha) of one module's keys ``g`` against its weight's ``shape``;
    ``alpha``: the alpha a plain LoRA without an ``alpha`` key has (the diffusers layout's header); ``weight``: the
    module's weight, which a DoRA module needs. Raises ``Mismatch`` when the update's shape is not ``shape``,
    ``Missing`` for a LoRA without its up or down weight, ValueError for what is not read."""
    what, magnitude = kind(g), g.get("dora_scale", g.get("lora_magnitude_vector"))
    out, n = shape[0], math.prod(shape[1:])
    if what == "lora":
        down, up, a = _plain(g, shape, alpha)
        if magnitude is None:
            return down, up, a
        u, v, scale = up.float().reshape(out, -1), down.float().reshape(down.shape[0], n), a / down.shape[0]
    else:
        u, v, dim = _loha(g) if what == "loha" else _lokr(g)
        if u.shape[0] != out or v.shape[1] != n:
            raise Mismatch(f"{what} {(u.shape[0], v.shape[1])} vs model {(out, n)} (flattened)")
        scale = float(g["scale"]) if "scale" in g else float(g["alpha"]) / dim if "alpha" in g and dim else 1.0
    if magnitude is not None:
        if weight is None or tuple(weight.shape) != tuple(shape):
            raise ValueError("a DoRA module needs the module's weight")
        u, v = _whole(decompose((u * scale) @ v, magnitude, weight, "lora_magnitude_vector" in g))  # W' - W
        scale = 1.0
    elif u.shape[1] >= min(out, n):  # no smaller than dW itself: dW beside an identity
        u, v = _whole(u @ v)
    r = u.shape[1]
    up = (u * scale).reshape(out, r, *[1] * (len(shape) - 2))
    return v.reshape(r, *shape[1:]).contiguous(), up.contiguous(), float(r)


def _plain(g: dict, shape: tuple, alpha: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up, alpha) of a kohya LoRA / LoCon module or a peft one (lora_A/lora_B)."""
    down, up = g.get("lora_down", g.get("lora_A")), g.get("lora_up", g.get("lora_B"))
    if down is None or up is None:
        raise Missing(f"missing its {'up' if up is None else 'down'} weight")
    if up.shape[0] != shape[0] or down.shape[1] != shape[1]:
        raise Mismatch(f"LoRA {tuple(up.shape[:1]) + tuple(down.shape[1:2])} vs model {tuple(shape[:2])}")
    if "lora_mid" in g:  # LoCon's Tucker core between a 1x1 down and a 1x1 up: fold it into down
        down = torch.einsum("ijx,jq->iqx", g["lora_mid"].float().flatten(2), down.float().flatten(1))
        down = down.reshape(down.shape[0], shape[1], *shape[2:])
    return down, up, float(g["alpha"]) if "alpha" in g else (alpha if alpha is not None else down.shape[0])


def decompose(delta: torch.Tensor, magnitude: torch.Tensor, weight: torch.Tensor, peft: bool = False) -> torch.Tensor:
    """DoRA's update W' - W (out, n) of a scaled low-rank update ``delta`` (out, n) with magnitude m against the
    module's ``weight`` W (out, in, *kernel): W' = m * (W + dW) / ||W + dW||. The norm is over each output row when
    m (kohya's ``dora_scale``) has ``out`` entries along dim 0, over each input channel when it has ``in`` along
    dim 1; peft's m (``peft``: (out,), a convolution's (1, out, 1, 1)) is always per output row. LyCORIS adds
    float32's eps to the norm; so do we."""
    w = weight.detach().to("cpu", torch.float32)  # beside the file's tensors, wherever the model is
    out, cin, ones = w.shape[0], w.shape[1], [1] * (w.dim() - 1)
    merged, m = w + delta.float().cpu().reshape(w.shape), magnitude.float().cpu()
    if m.numel() == out and (peft or m.shape[0] == out):
        norm = merged.reshape(out, -1).norm(dim=1).reshape(out, *ones)
    elif m.dim() >= 2 and m.shape[0] == 1 and m.shape[1] == cin and m.numel() == cin:
        norm = merged.transpose(0, 1).reshape(cin, -1).norm(dim=1).reshape(cin, *ones).transpose(0, 1)
    else:
        raise Mismatch(f"DoRA magnitude {tuple(m.shape)} vs model {tuple(w.shape)}")
    return (merged * (m.reshape(norm.shape) / (norm + torch.finfo(torch.float32).eps)) - w).reshape(out, -1)


def _half(wa: torch.Tensor, wb: torch.Tensor, t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) of one low-rank half: wa (out, r) @ wb (r, ...), or with a Tucker core t (r, r, *kernel) between
    wa (r, out) and wb (r, in)."""
    wa, wb = wa.float(), wb.float()
    if t is None:
        return wa.reshape(wa.shape[0], -1), wb.reshape(wb.shape[0], -1)
    v = torch.einsum("ijx,jq->iqx", t.float().flatten(2), wb)  # (r, in, prod(kernel))
    return wa.T, v.reshape(v.shape[0], -1)


def _loha(g: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(U, V, dim) of a LoHa module: the Khatri-Rao products of its two halves' factors."""
    u1, v1 = _half(g["hada_w1_a"], g["hada_w1_b"], g.get("hada_t1"))
    u2, v2 = _half(g["hada_w2_a"], g["hada_w2_b"], g.get("hada_t2"))
    if u1.shape[0] != u2.shape[0] or v1.shape[1] != v2.shape[1]:
        raise Mismatch(f"LoHa halves {(u1.shape[0], v1.shape[1])} and {(u2.shape[0], v2.shape[1])}")
    u = (u1[:, :, None] * u2[:, None, :]).flatten(1)  # (out, r1 r2)
    v = (v1[:, None, :] * v2[None, :, :]).flatten(0, 1)  # (r1 r2, n)
    return u, v, g["hada_w1_b"].shape[0]


def _whole(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) of a whole matrix w (a, b): the identity on its smaller side."""
    w = w.float().reshape(w.shape[0], -1)
    return (torch.eye(w.shape[0]), w) if w.shape[0] <= w.shape[1] else (w, torch.eye(w.shape[1]))


def _lokr(g: dict) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(U, V, dim) of a LoKr module: the Kronecker products of its halves' factors."""
    u1, v1 = _whole(g["lokr_w1"]) if "lokr_w1" in g else _half(g["lokr_w1_a"], g["lokr_w1_b"], None)
    if "lokr_w2" in g:
        u2, v2 = _whole(g["lokr_w2"])
    else:
        u2, v2 = _half(g["lokr_w2_a"], g["lokr_w2_b"], g.get("lokr_t2"))
    dim = g["lokr_w2_b"].shape[0] if "lokr_w2_b" in g else g["lokr_w1_b"].shape[0] if "lokr_w1_b" in g else None
    u1, u2, v1, v2 = (torch.empty(t.shape).copy_(t) for t in (u1, u2, v1, v2))  # row-major strides: kron views them
    return torch.kron(u1, u2), torch.kron(v1, v2), dim
