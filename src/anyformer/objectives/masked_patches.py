"""Masked image modelling on patch tokens: MAE (an asymmetric encoder that sees only the
visible patches and a light decoder) and, as ``style: simmim``, SimMIM (mask tokens in
the encoder, a linear prediction head)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from anyformer.components.base import Context
from anyformer.errors import SpecError
from anyformer.model.transformer import build_block, mixers
from anyformer.objectives.driven import (
    DrivenObjective,
    own_module,
    plain_schedule_problem,
    require,
    run_blocks,
)
from anyformer.objectives.losses import Forward
from anyformer.registry import Capabilities, Paper, capabilities, register
from anyformer.spec import ModelSpec, parse
from anyformer.tasks.base import Batch

MAE = Paper("Masked Autoencoders Are Scalable Vision Learners", 2022, "He et al.")
SIMMIM = Paper("SimMIM: A Simple Framework for Masked Image Modeling", 2022, "Xie et al.")
#: The extra a corrupted batch carries: uniform noise per pixel ``[B, H, W]``; a patch's
#: noise is that of its top-left pixel, and the lowest ``1 - mask_ratio`` share is kept.
NOISE = "patch_noise"


class MaskedPatchesParams(BaseModel):
    """- ``mask_ratio``: share of the patches masked (MAE: 0.75; SimMIM's best: 0.6).
    - ``style``: ``mae`` (encoder on visible patches only, light decoder) or ``simmim``
      (a learned mask token replaces masked patches in the encoder, linear head).
    - ``norm_pix``: reconstruct each patch normalised by its own mean and standard
      deviation (MAE's better-performing target).
    - ``distance``: ``mse`` (MAE) or ``l1`` (SimMIM's choice).
    - ``decoder_layers``, ``decoder_width``, ``decoder_heads``: the MAE decoder (default
      width half the model's, rounded to a multiple of 4 heads' worth of channels)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    style: Literal["mae", "simmim"] = "mae"
    norm_pix: bool = True
    distance: Literal["mse", "l1"] = "mse"
    decoder_layers: PositiveInt = 2
    decoder_width: PositiveInt | None = None
    decoder_heads: PositiveInt = 2


def patch_targets(images: torch.Tensor, p: int, norm_pix: bool) -> torch.Tensor:
    """The pixels of each ``p x p`` patch ``[B, N, C p p]`` in the patch embedder's order
    (row-major grid; channel, row, column inside a patch: ``F.unfold``'s), each patch
    normalised to zero mean and unit variance when ``norm_pix`` (MAE, eps 1e-6)."""
    t = F.unfold(images.float(), kernel_size=p, stride=p).transpose(1, 2)
    if norm_pix:
        mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True, unbiased=False)
        t = (t - mean) / (var + 1e-6).sqrt()
    return t


def patch_mask(noise: torch.Tensor, p: int, ratio: float) -> torch.Tensor:
    """``[B, N]`` bool, True at masked patches: per row, the ``round(N ratio)`` patches
    (at least 1, at most ``N - 1``) with the highest noise at their top-left pixel."""
    per_patch = noise[:, ::p, ::p].flatten(1)
    n = per_patch.shape[1]
    n_mask = min(max(round(n * ratio), 1), n - 1)
    rank = per_patch.argsort(dim=1).argsort(dim=1)
    return rank >= n - n_mask


class MAEDecoder(nn.Module):
    """MAE's light decoder: the encoded visible tokens projected to the decoder width,
    a learned mask token at every masked patch, fixed 2-D sin-cos positions over the full
    token layout, ``layers`` Transformer blocks of the library's own spec (bidirectional
    softmax attention, pre-norm), a norm and a linear map to the pixels of a patch."""

    def __init__(self, model: nn.Module, p: MaskedPatchesParams, out: int) -> None:
        super().__init__()
        spec: ModelSpec = model.spec
        width = p.decoder_width or max(4 * p.decoder_heads, (spec.d_model // 2) // 4 * 4)
        dec = parse(
            ModelSpec,
            {
                "kind": "encoder",
                "d_model": width,
                "n_heads": p.decoder_heads,
                "n_layers": p.decoder_layers,
                "max_len": spec.max_len,
                "embedder": spec.embedder_ref.model_dump(mode="json"),
                "input_shape": list(spec.input_shape),
                "position": "sincos_2d",
                "head": "token_regress",
                "n_outputs": out,
            },
        )
        self.spec = dec
        self.embed = nn.Linear(spec.d_model, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.position = dec.position.entry.build(dec.position.config, dims=dec.dims())
        self.blocks = nn.ModuleList(build_block(dec, i) for i in range(dec.n_layers))
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, out)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, spec.init_std)
                nn.init.zeros_(module.bias) if module.bias is not None else None
        nn.init.normal_(self.mask_token, 0.0, spec.init_std)

    def forward(self, h: torch.Tensor, ids: torch.Tensor, length: int) -> torch.Tensor:
        """Predictions ``[B, length, out]`` for every token of the layout from the encoded
        visible tokens ``h [B, n, D]`` at token indices ``ids [B, n]``."""
        z = self.embed(h)
        b, _, w = z.shape
        index = ids.unsqueeze(-1).expand(-1, -1, w)
        placed = torch.zeros(b, length, w, dtype=z.dtype, device=z.device).scatter(1, index, z)
        seen = torch.zeros(b, length, dtype=torch.bool, device=z.device)
        seen.scatter_(1, ids, True)
        x = torch.where(seen.unsqueeze(-1), placed, self.mask_token.to(z.dtype))
        positions = torch.arange(length, device=z.device)
        x = self.position.embed(x, positions)
        ctx = Context(positions, False, self.position)
        for block in self.blocks:
            x = block(x, ctx)
        return self.pred(self.norm(x))


class SimMIMHead(nn.Module):
    """SimMIM's parts: a learned mask token of the model's width and a linear head from
    the encoder's last hidden states to a patch's pixels."""

    def __init__(self, d_model: int, out: int, std: float) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(d_model) * std)
        self.pred = nn.Linear(d_model, out)
        nn.init.normal_(self.pred.weight, 0.0, std)
        nn.init.zeros_(self.pred.bias)


@register(
    "objective",
    "masked_patches",
    paper=MAE,
    summary="MAE: encoder sees only the visible patches (mask_ratio 0.75), a light decoder "
    "reconstructs the masked ones (normalised pixels); style=simmim: mask tokens + linear head",
    params=MaskedPatchesParams,
    caps=Capabilities(),
)
class MaskedPatches(DrivenObjective):
    """Masked image modelling on the ``patches`` embedder's tokens.

    ``style=mae`` (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"):
    each image's patches are masked at random (``mask_ratio``, a fresh draw per image);
    the encoder, the model's own blocks and final norm, sees only the visible patch tokens
    (plus the CLS/register tokens), each with the position of its cell (an ``embed``
    scheme is added before the masked tokens are dropped; rotary schemes get the kept
    tokens' indices as per-row positions); the decoder (:class:`MAEDecoder`, owned by the
    objective) puts a mask token at every masked cell and predicts every patch's pixels.
    The loss is the mean squared error on the masked patches only, against pixels
    normalised per patch (``norm_pix``).

    ``style=simmim`` (Xie et al., 2022, "SimMIM"): the masked patches' tokens are replaced
    by a learned mask token, the whole grid goes through the encoder, and a linear head
    predicts the masked patches' pixels (loss on masked patches; SimMIM uses ``l1``).

    The mask is drawn in :meth:`corrupt` (per-pixel noise in ``batch.extras``), so it is a
    function of ``(train.seed, step)`` and fixed per evaluation batch. The model's head
    is not trained; fine-tuning loads the encoder (``init_from``), never the decoder.
    """

    kinds = ("encoder",)
    embedders: ClassVar[tuple[str, ...] | None] = ("patches",)
    params: MaskedPatchesParams

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        images = batch.inputs
        if images.dim() != 4:
            raise SpecError(
                f"objective 'masked_patches' masks image patches, but the batch's inputs have "
                f"shape {tuple(images.shape)}; use an image task ([B, C, H, W] inputs)"
            )
        b, _, h, w = images.shape
        noise = torch.rand(b, h, w, generator=generator)
        return Batch(
            batch.inputs, batch.targets, batch.loss_mask, batch.padding_mask, batch.group,
            {**batch.extras, NOISE: noise},
        )  # fmt: skip

    # ------------------------------------------------------------------ parts
    def problem(self, model: nn.Module) -> str | None:
        """Why ``model`` cannot be trained this way (``None`` when it can)."""
        size = getattr(model.embed, "patch_size", None)
        if size is None or getattr(model.embed, "prefix", None) is None:
            return (
                f"objective 'masked_patches' needs the 'patches' embedder (one token per "
                f"non-overlapping patch), not {type(model.embed).__name__}; set "
                f"model.embedder=patches"
            )
        grid = [m for m in mixers(model) if capabilities(m).grid]
        if grid:
            return (
                f"objective 'masked_patches' drops the masked patches from the encoder's "
                f"input, but mixer {type(grid[0]).__name__} needs the whole grid; use a "
                f"mixer without the grid capability (softmax attention)"
            )
        mode = capabilities(model.position).position_mode
        if mode == "bias" and self.params.style == "mae":
            return (
                "objective 'masked_patches' (style=mae) gives the kept tokens their own "
                "positions, which a score-bias position scheme cannot take; use an embed "
                "or rotary scheme (sincos_2d, learned_2d, rope_2d) or style=simmim"
            )
        if mode == "rotary" and self.params.style == "mae":
            lacking = [m for m in mixers(model) if not capabilities(m).packing]
            if lacking:
                return (
                    f"objective 'masked_patches' (style=mae) with a rotary scheme gives "
                    f"every row its own positions, which mixer {type(lacking[0]).__name__} "
                    f"(no packing capability) cannot take; use an embed scheme (sincos_2d) "
                    f"or a mixer with packing"
                )
        return plain_schedule_problem(model, "masked_patches")

    def build_module(self, model: nn.Module) -> nn.Module:
        require(self.problem(model))
        c = int(model.spec.input_shape[0])
        out = c * model.embed.patch_size**2
        if self.params.style == "simmim":
            return SimMIMHead(model.spec.d_model, out, model.spec.init_std)
        return MAEDecoder(model, self.params, out)

    def layout(self, model: nn.Module) -> tuple[int, int, int]:
        """``(n_prefix, n_grid, length)`` of the embedder's tokens: prefix tokens first,
        then the row-major grid, then any post-sequence CLS."""
        layout = type(model.embed).layout(model.spec.embedder_ref.config, model.spec)
        gh, gw = layout.grid
        return layout.n_prefix, gh * gw, int(layout.length)

    def visible_ids(self, model: nn.Module, mask: torch.Tensor, length: int) -> torch.Tensor:
        """Token indices ``[B, n]`` the MAE encoder sees, in order: the prefix tokens, the
        kept patches (every row keeps as many) and any token after the grid."""
        n_prefix, n_grid, _ = self.layout(model)
        b = mask.shape[0]
        kept = (~mask).sum(1)
        if not bool((kept == kept[0]).all()):
            raise ValueError("every row must keep the same number of patches")
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : int(kept[0])]
        dev = mask.device
        before = torch.arange(n_prefix, device=dev).expand(b, -1)
        after = torch.arange(n_prefix + n_grid, length, device=dev).expand(b, -1)
        return torch.cat([before, order + n_prefix, after], dim=1)

    def encode(
        self, model: nn.Module, images: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE's encoder: ``(h [B, n, D], ids [B, n])``, the last hidden states of the
        visible tokens only and their token indices."""
        tokens = model.embed(images)
        length = tokens.shape[1]
        x = model.embed_positions(tokens, torch.arange(length, device=tokens.device))
        ids = self.visible_ids(model, mask, length)
        x = x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        per_row = all(capabilities(m).packing for m in mixers(model))
        positions = ids if per_row else torch.arange(ids.shape[1], device=ids.device)
        return run_blocks(model, x, positions), ids

    def predictions(
        self, model: nn.Module, images: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Predicted pixels of every patch ``[B, N, C p p]`` (only masked ones are scored)."""
        n_prefix, n_grid, length = self.layout(model)
        parts = own_module(model)
        if self.params.style == "mae":
            h, ids = self.encode(model, images, mask)
            return parts(h, ids, length)[:, n_prefix : n_prefix + n_grid]
        tokens = model.embed(images)
        grid = tokens[:, n_prefix : n_prefix + n_grid]
        grid = torch.where(mask.unsqueeze(-1), parts.mask_token.to(grid.dtype), grid)
        tokens = torch.cat([tokens[:, :n_prefix], grid, tokens[:, n_prefix + n_grid :]], 1)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = run_blocks(model, model.embed_positions(tokens, positions), positions)
        return parts.pred(h[:, n_prefix : n_prefix + n_grid])

    def objective_loss(
        self, model: nn.Module, batch: Batch, forward: Forward | None
    ) -> torch.Tensor:
        images = batch.inputs
        p = model.embed.patch_size
        mask = patch_mask(batch.extras[NOISE].to(images.device), p, self.params.mask_ratio)
        pred = self.predictions(model, images, mask).float()
        target = patch_targets(images, p, self.params.norm_pix)
        if self.params.distance == "mse":
            per_patch = (pred - target).pow(2).mean(-1)
        else:
            per_patch = (pred - target).abs().mean(-1)
        weight = mask.to(per_patch.dtype)
        return (per_patch * weight).sum() / weight.sum()


__all__ = ["MaskedPatches", "MaskedPatchesParams", "patch_mask", "patch_targets"]
