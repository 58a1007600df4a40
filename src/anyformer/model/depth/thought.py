"""``continuous_thought``: decoders insert ``m`` continuous thoughts after the prompt,
each the last hidden state fed back as the next input embedding (Coconut; Zhu et al.'s
reasoning by superposition)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, Field

from anyformer.components.base import Context
from anyformer.model.depth.base import DepthSchedule, frozen
from anyformer.model.flops import forward_flops_per_token
from anyformer.model.output import ModelOutput
from anyformer.registry import Capabilities, Paper, register

if TYPE_CHECKING:
    from anyformer.model.transformer import Transformer
    from anyformer.spec import ModelSpec

SUPERPOSITION = Paper(
    "Reasoning by Superposition: A Theoretical Perspective on Chain of Continuous Thought",
    2025,
    "Zhu et al.",
)


class ContinuousThoughtParams(BaseModel):
    """- ``thoughts``: continuous thought steps ``m`` inserted after the prompt (0 = plain
      ``stack``).
    - ``sep_token``: the token that ends the prompt (the first one in each row; 2 is
      ``SEP`` of the algorithmic tasks). Every row must contain it.
    """

    model_config = frozen()
    thoughts: int = Field(2, ge=0)
    sep_token: int = Field(2, ge=0)


@register(
    "depth",
    "continuous_thought",
    paper=SUPERPOSITION,
    summary="decoders: m continuous thoughts after the prompt, each the last hidden state "
    "fed back as the next input embedding (Coconut)",
    params=ContinuousThoughtParams,
    caps=Capabilities(complexity="O(L m)"),
)
class ContinuousThought(DepthSchedule):
    """Chain of continuous thought: the stack runs on ``[prompt, thoughts, answer]``.

    Let ``s`` be the position of the first ``sep_token`` in a row. The model's input
    sequence becomes ``e_0 .. e_s, c_1 .. c_m, e_{s+1} .. e_{T-1}`` (``e`` token
    embeddings, positions ``0 .. T+m-1``), where thought ``c_j`` is the final-normed last
    hidden state (what the head reads) at the position just before it, computed
    sequentially: pass ``j`` runs the blocks on the prefix up to ``c_{j-1}`` and reads
    ``c_j`` (the graph is kept, so training backpropagates through every thought).
    A final pass over the whole sequence gives the outputs, returned at the original
    ``T`` positions: position ``t < s`` reads ``t``, the prompt's last position ``s``
    reads the last thought ``s + m`` (it predicts the first answer token, exactly what
    SEP predicts without thoughts), ``t > s`` reads ``t + m``. Teacher forcing is
    unchanged: the answer tokens follow the thoughts, targets stay aligned with inputs.
    Uncached greedy decoding works (each forward recomputes the same thoughts).

    Papers: "Reasoning by Superposition", Zhu et al., 2025; Coconut ("Training Large
    Language Models to Reason in a Continuous Latent Space", Hao et al., 2024). Not
    supported: KV caches, packed rows, Coconut's multi-stage curriculum (replacing
    language CoT steps by thoughts), encoders and vector inputs. Cost: ``m + 1`` passes,
    ``max_len`` must cover ``T + m``.
    """

    params: ContinuousThoughtParams

    @staticmethod
    def check_spec(params: ContinuousThoughtParams, spec: ModelSpec) -> str | None:
        if spec.kind != "decoder" or spec.input_kind != "tokens":
            return (
                f"needs kind='decoder' and a token embedder (got kind='{spec.kind}', "
                f"embedder='{spec.embedder_ref.name}'): thoughts follow a token prompt causally"
            )
        if spec.vocab_size is not None and params.sep_token >= spec.vocab_size:
            return f"sep_token={params.sep_token} must be < model.vocab_size={spec.vocab_size}"
        return None

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> ModelOutput:
        m = self.params.thoughts
        if m == 0:
            return super().forward(model, x, ctx, inputs)
        if getattr(ctx, "cache", None) is not None or getattr(ctx, "segments", None) is not None:
            raise ValueError("depth='continuous_thought' supports neither a cache nor packed rows")
        b, t = inputs.shape
        total = t + m
        if total > model.spec.max_len:
            raise ValueError(
                f"input length {t} + {m} thoughts exceeds model.max_len={model.spec.max_len}"
            )
        is_sep = inputs == self.params.sep_token
        missing = (~is_sep.any(1)).nonzero()
        if missing.numel():
            raise ValueError(
                f"depth='continuous_thought': row {int(missing[0])} has no "
                f"sep_token={self.params.sep_token} to place the thoughts after"
            )
        s = is_sep.int().argmax(1)  # first SEP per row, [B]
        dev = inputs.device
        p = torch.arange(total, device=dev).expand(b, total)
        thought = (p > s[:, None]) & (p <= s[:, None] + m)
        src = torch.where(p <= s[:, None], p, p - m).clamp(0, t - 1)
        base = model.embed(inputs).gather(1, src[..., None].expand(-1, -1, model.spec.d_model))
        mask = None
        if ctx.padding_mask is not None:
            mask = ctx.padding_mask.gather(1, src) | thought
        positions = torch.arange(total, device=dev)
        long_ctx = dataclasses.replace(ctx, positions=positions, padding_mask=mask)
        rows = torch.arange(b, device=dev)
        thoughts: list[torch.Tensor] = []

        def hidden(n: int) -> torch.Tensor:
            emb = base[:, :n]
            for j, c in enumerate(thoughts):  # place c_{j+1} at position s + j + 1
                at = (p[:, :n] == (s + j + 1)[:, None]).unsqueeze(-1)
                emb = torch.where(at, c[:, None, :], emb)
            h = model.embed_positions(emb, positions[:n])
            sub = dataclasses.replace(
                long_ctx,
                positions=positions[:n],
                padding_mask=None if mask is None else mask[:, :n],
            )
            for block in model.blocks:
                h = block(h, sub)
            return h

        for j in range(m):
            n = int(s.max()) + j + 1  # every row's position s + j lies inside the prefix
            thoughts.append(model.norm(hidden(n))[rows, s + j])
        h = hidden(total)
        out_pos = torch.arange(t, device=dev).expand(b, t)
        out_pos = torch.where(out_pos < s[:, None], out_pos, out_pos + m)
        out_pos = torch.where(torch.arange(t, device=dev) == s[:, None], s[:, None] + m, out_pos)
        h = h.gather(1, out_pos[..., None].expand(-1, -1, h.shape[-1]))
        return ModelOutput(model.readout(h, ctx))

    def forward_flops(self, model: Transformer, seq_len: int, training: bool = True) -> int:
        """Upper bound: ``m + 1`` passes over ``seq_len + m`` tokens, per original token."""
        m = self.params.thoughts
        long = seq_len + m
        per_pass = sum(forward_flops_per_token(b, long) for b in model.blocks)
        blocks = (m + 1) * per_pass * long // seq_len
        return blocks + forward_flops_per_token(model.head, seq_len)
