"""Generate from a trained run: load its spec and latest checkpoint, encode a prompt.

Prompts (the ``anyformer generate`` contract):

- **text tasks** (the task class sets ``byte_level = True``: its tokens are text, the
  UTF-8 bytes 0-255 or the ids of the subword tokenizer the run trained and kept in its
  folder, :func:`run_codec`) take the prompt as text; the output is text (bytes that do
  not decode are shown as U+FFFD);
- **every other task** takes the prompt as space-separated token ids (``"1 5 7 2"``),
  each in ``[0, vocab_size)``; the output is space-separated ids.

An encoder–decoder run also takes one source per prompt (``--source``, encoded the same
way with the encoder's vocabulary): :func:`encode_sources` pads them into a batch with
its ``source_mask``; the prompt is the decoder's start (e.g. ``BOS``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anyformer.errors import RunFolderError, UserError
from anyformer.lab.run import (
    build_objective,
    check_checkpoint_spec,
    load_run_spec,
    task_for_run,
)
from anyformer.model.transformer import Transformer, build_model
from anyformer.objectives.losses import attach_objective
from anyformer.spec import ExperimentSpec
from anyformer.tasks.tokenizer import Codec
from anyformer.training.checkpoint import checkpoint_info, latest_checkpoint, load_checkpoint


def load_run_model(run_dir: Path | str) -> tuple[ExperimentSpec, Transformer]:
    """The run's spec and its model with the weights of the latest checkpoint (eval mode).

    The checkpoint is verified and loaded without running anything from the folder
    (:func:`~anyformer.training.checkpoint.load_checkpoint`)."""
    folder = Path(run_dir)
    spec = load_run_spec(folder)
    path = latest_checkpoint(folder / "checkpoint")
    if path is None:
        raise RunFolderError(
            f"run '{run_dir}' has no checkpoint yet (checkpoint/latest is missing)"
        )
    check_checkpoint_spec(folder, spec)  # spec.yaml edited after the checkpoint: refused
    model = build_model(spec.model)  # spec.yaml holds the resolved spec
    # an objective's own modules (a generator, a decoder) are in the checkpoint too
    attach_objective(model, build_objective(spec, task_for_run(spec, folder)))
    layout = checkpoint_info(path).get("quantization")
    if layout is not None:  # written by ``anyformer quantize``: int8/int4 layers
        from anyformer.compress.qmodel import rebuild_from_checkpoint

        rebuild_from_checkpoint(model, layout, path)
    load_checkpoint(path, model)
    return spec, model.eval()


def is_byte_level(spec: ExperimentSpec) -> bool:
    """Whether the run's task reads and writes UTF-8 bytes (``byte_level = True``)."""
    return bool(getattr(spec.task.entry.cls, "byte_level", False))


def run_codec(spec: ExperimentSpec, run_dir: Path | str) -> Codec | None:
    """The tokenizer of a text run — UTF-8 bytes, or the subword tokenizer kept in its
    folder — or None when the run's task reads token ids."""
    if not is_byte_level(spec):
        return None
    task = task_for_run(spec, run_dir)
    return getattr(task, "codec", None) or Codec()


def encode_prompt(
    text: str, vocab_size: int, byte_level: bool | Codec | None, flag: str = "--prompt"
) -> torch.Tensor:
    """``[1, T]`` token ids of ``text``: encoded by the run's tokenizer (``byte_level``
    a :class:`Codec`, or True for UTF-8 bytes), or its space-separated ids (False/None;
    ``flag`` names the option in messages)."""
    if byte_level:
        codec = byte_level if isinstance(byte_level, Codec) else Codec()
        ids = codec.encode(text)
    else:
        try:
            ids = [int(tok) for tok in text.split()]
        except ValueError:
            raise UserError(
                f"{flag} {text!r} is not space-separated token ids (e.g. '1 5 7'); this "
                f"run's task is not byte-level, so prompts are token ids"
            ) from None
    if not ids:
        raise UserError(f"{flag} is empty; give at least one token")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"{flag} token {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return torch.tensor([ids], dtype=torch.long)


def encode_sources(
    texts: list[str], model: Transformer, n_prompts: int, byte_level: bool | Codec | None
) -> dict[str, torch.Tensor]:
    """The ``source``/``source_mask`` keyword arguments of ``generate`` for an
    encoder–decoder (one ``--source`` per prompt, padded at the end), or ``{}`` for any
    other model, which must be given none."""
    kind = model.spec.kind
    if kind != "encoder_decoder":
        if texts:
            raise UserError(f"--source is for encoder_decoder runs; this run's model is {kind}")
        return {}
    if len(texts) != n_prompts:
        raise UserError(
            f"an encoder_decoder run needs one --source per --prompt ({len(texts)} --source "
            f"for {n_prompts} --prompt)"
        )
    encoder = model.spec.encoder_spec()
    if encoder.input_kind != "tokens":
        raise UserError(
            f"--source is read as tokens, but this run's encoder reads {encoder.input_kind} "
            f"(embedder={encoder.embedder_ref.name}); generate from Python instead"
        )
    rows = [encode_prompt(t, encoder.vocab_size or 0, byte_level, "--source")[0] for t in texts]
    lengths = torch.tensor([len(r) for r in rows])
    source = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    return {"source": source, "source_mask": torch.arange(source.shape[1]) < lengths[:, None]}


def decode_tokens(ids: list[int], byte_level: bool | Codec | None) -> str:
    """Text (decoded by the run's tokenizer, or UTF-8 bytes for True) or space-separated ids."""
    if byte_level:
        return (byte_level if isinstance(byte_level, Codec) else Codec()).decode(ids)
    return " ".join(str(i) for i in ids)


__all__ = [
    "decode_tokens",
    "encode_prompt",
    "encode_sources",
    "is_byte_level",
    "load_run_model",
    "run_codec",
]
