"""Reference and chunked kernels for linear attention and the delta rule (pure tensor ops).

Shapes: queries/keys ``[B, H, T, F]`` (already feature-mapped for linear attention),
values ``[B, H, T, Dv]``, per-token scalars ``[B, H, T]``. Every causal kernel comes in
a sequential form (the readable reference, one token at a time), a chunked parallel
form (the fast one, tested equal) and a one-token ``*_step`` for constant-memory decoding.

Linear attention ("Transformers are RNNs", Katharopoulos et al., 2020)::

    S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t),
    y_t = S_t^T phi(q_t) / (z_t . phi(q_t) + eps)

With ``normalize=False`` the division is dropped (``y_t = S_t^T phi(q_t)``): the
un-normalised linear self-attention of "Transformers Learn In-Context by Gradient
Descent" (von Oswald et al., 2023).

Delta rule ("Linear Transformers Are Secretly Fast Weight Programmers", Schlag et al.,
2021; chunked form from "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length", Yang et al., 2024), with ``S`` stored as ``[Dk, Dv]``::

    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,   y_t = S_t^T q_t
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- linear attention


def _pad_time(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad dim 2 (time) of ``x`` up to a multiple of ``multiple``."""
    extra = -x.shape[2] % multiple
    if not extra:
        return x
    pad = [0, 0] * (x.dim() - 3) + [0, extra]
    return F.pad(x, pad)


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = 1e-6,
    normalize: bool = True,
) -> torch.Tensor:
    """Causal linear attention, one token at a time (reference form).

    ``q``/``k`` are feature-mapped ``[B, H, T, F]``; a key whose features are zero
    (e.g. a padded one) contributes nothing.
    """
    b, h, _, f = q.shape
    s = q.new_zeros(b, h, f, v.shape[-1])
    z = q.new_zeros(b, h, f)
    out = []
    for q_t, k_t, v_t in zip(q.unbind(2), k.unbind(2), v.unbind(2)):
        y, (s, z) = linear_attention_step(q_t, k_t, v_t, (s, z), eps, normalize)
        out.append(y)
    return torch.stack(out, dim=2)


def linear_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor],
    eps: float = 1e-6,
    normalize: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One decoding step: ``q``/``k`` ``[B, H, F]``, ``v`` ``[B, H, Dv]``, state ``(S, z)``."""
    s, z = state
    s = s + k.unsqueeze(-1) * v.unsqueeze(-2)
    z = z + k
    num = torch.einsum("bhf,bhfv->bhv", q, s)
    if not normalize:
        return num, (s, z)
    den = (q * z).sum(-1, keepdim=True)
    return num / (den + eps), (s, z)


def linear_attention_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int = 64,
    eps: float = 1e-6,
    normalize: bool = True,
) -> torch.Tensor:
    """Causal linear attention in chunks: masked quadratic inside a chunk, state across.

    Within chunk ``c`` the output is ``(tril(Q_c K_c^T) V_c + Q_c S_{<c}) / (...)`` where
    ``S_{<c}`` sums ``K^T V`` over earlier chunks (and ``z_{<c}`` sums ``K``). Cost
    ``O(T (C + F) Dv)`` per head.
    """
    b, h, t, f = q.shape
    c = max(1, min(chunk_size, t))  # a sequence shorter than a chunk is one chunk, unpadded
    # the normaliser rides along as an extra value column of ones
    v1 = torch.cat((v, v.new_ones(*v.shape[:-1], 1)), dim=-1)
    qc, kc, vc = (_pad_time(x, c) for x in (q, k, v1))
    n = qc.shape[2] // c
    qc = qc.reshape(b, h, n, c, f)
    kc = kc.reshape(b, h, n, c, f)
    vc = vc.reshape(b, h, n, c, v1.shape[-1])
    mask = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)
    intra = scores @ vc
    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, F, Dv+1]
    before = torch.cat((torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(dim=2)), dim=2)
    out = (intra + qc @ before).reshape(b, h, n * c, -1)[:, :, :t]
    if not normalize:
        return out[..., :-1]
    return out[..., :-1] / (out[..., -1:] + eps)


def linear_attention_global(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = 1e-6,
    normalize: bool = True,
) -> torch.Tensor:
    """Bidirectional linear attention: every query reads the sums over all keys.

    ``y_i = (sum_j phi(k_j) v_j^T)^T phi(q_i) / (phi(q_i) . sum_j phi(k_j) + eps)``; keys
    with zero features (padding) are thereby excluded.
    """
    kv = k.transpose(-1, -2) @ v  # [B, H, F, Dv]
    if not normalize:
        return q @ kv
    z = k.sum(dim=2)  # [B, H, F]
    den = (q * z.unsqueeze(2)).sum(-1, keepdim=True)
    return (q @ kv) / (den + eps)


# --------------------------------------------------------------------------- delta rule


def delta_rule_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One delta-rule step: ``q``/``k`` ``[B, H, Dk]``, ``v`` ``[B, H, Dv]``, ``beta``
    ``[B, H]``, state ``S`` ``[B, H, Dk, Dv]``; returns ``(S_t^T q_t, S_t)``."""
    predicted = torch.einsum("bhk,bhkv->bhv", k, state)
    error = beta.unsqueeze(-1) * (v - predicted)
    state = state + k.unsqueeze(-1) * error.unsqueeze(-2)
    return torch.einsum("bhk,bhkv->bhv", q, state), state


def delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta rule token by token (reference form); returns outputs and final state."""
    b, h, _, dk = k.shape
    if state is None:
        state = k.new_zeros(b, h, dk, v.shape[-1])
    out = []
    for q_t, k_t, v_t, b_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unbind(2)):
        y, state = delta_rule_step(q_t, k_t, v_t, b_t, state)
        out.append(y)
    return torch.stack(out, dim=2), state


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta rule in chunks via the WY/UT representation (Yang et al., 2024).

    Writing the update as ``S_t = S_0 + sum_{i<=t} k_i u_i^T`` inside a chunk that starts
    from state ``S_0`` gives ``u_i = beta_i (v_i - S_0^T k_i - sum_{j<i} (k_i . k_j) u_j)``,
    i.e. ``A U' = diag(beta) (V - K S_0)`` with the unit lower-triangular
    ``A = I + tril(diag(beta) K K^T, -1)``. So ``U' = U - W S_0`` with
    ``W = A^{-1} diag(beta) K`` and ``U = A^{-1} diag(beta) V``, computed for all chunks
    at once by one triangular solve; then per chunk
    ``O = Q S_0 + tril(Q K^T) U'`` and ``S_C = S_0 + K^T U'``. Only this last step runs
    sequentially over chunks.
    """
    b, h, t, dk = k.shape
    dv = v.shape[-1]
    c = max(1, min(chunk_size, t))  # a sequence shorter than a chunk is one chunk, unpadded
    # padded steps have beta = 0 and k = 0, so they leave the state unchanged
    qc, kc, vc = (_pad_time(x, c) for x in (q, k, v))
    bc = _pad_time(beta.unsqueeze(-1), c).squeeze(-1)
    n = qc.shape[2] // c
    qc = qc.reshape(b, h, n, c, dk)
    kc = kc.reshape(b, h, n, c, dk)
    vc = vc.reshape(b, h, n, c, dv)
    bc = bc.reshape(b, h, n, c, 1)
    eye = torch.eye(c, dtype=k.dtype, device=k.device)
    a = eye + ((bc * kc) @ kc.transpose(-1, -2)).tril(-1)
    w = torch.linalg.solve_triangular(a, bc * kc, upper=False, unitriangular=True)
    u = torch.linalg.solve_triangular(a, bc * vc, upper=False, unitriangular=True)
    qk = (qc @ kc.transpose(-1, -2)).tril()
    if state is None:
        state = k.new_zeros(b, h, dk, dv)
    out = []
    # unbind once: indexing chunk i in the loop would cost a full-size gradient per chunk
    for q_i, k_i, qk_i, w_i, u_i in zip(*(x.unbind(2) for x in (qc, kc, qk, w, u))):
        u_i = u_i - w_i @ state
        out.append(q_i @ state + qk_i @ u_i)
        state = state + k_i.transpose(-1, -2) @ u_i
    return torch.cat(out, dim=2)[:, :, :t], state


__all__ = [
    "delta_rule_chunked",
    "delta_rule_recurrent",
    "delta_rule_step",
    "linear_attention_chunked",
    "linear_attention_global",
    "linear_attention_recurrent",
    "linear_attention_step",
]
