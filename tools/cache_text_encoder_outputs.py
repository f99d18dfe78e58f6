"""Write SDXL text-encoder output caches, as a training run with ``--cache_text_encoder_outputs_to_disk`` would.

TOOLS.md §9: same flags as :mod:`tools.cache_latents` (training's dataset flags, ``--max_token_length``,
``--tokenizer_cache_dir``, ``--mixed_precision``). Files are ``{stem}_te_outputs.npz`` next to each
image with keys ``hidden_state1 (L, D1)``, ``hidden_state2 (L, D2)``, ``pool2 (P,)`` and the caption
hash (DATASET.md §10); a file whose caption still matches is kept, so a second run encodes nothing.

sd-train: tools may not import ``sd_train``, so the SDXL conditioning (chunking of long captions,
penultimate hidden states of both encoders, TE2's projected pooled output of the first chunk) is
written again here with ``library.models`` classes; it must stay identical to
``sd_train.families.sdxl.SdxlFamily.encode`` (a test compares them).

Usage: ``cache_text_encoder_outputs --pretrained_model_name_or_path M.safetensors --dataset_config D.toml --sdxl``.
"""

from __future__ import annotations

import argparse
import logging

import torch

from library.dataset import latent_cache
from library.errors import UserError, run_cli
from tools.cache_latents import build_datasets, load, seeds, setup_parser

logger = logging.getLogger(__name__)
CHUNK = 77  # kohya-compat: CLIP context length; long captions are cut into 77-token chunks


def sdxl_tokenizers(cache_dir: str | None) -> list:
    """``[CLIP-L (pads with EOS), OpenCLIP-bigG (pads with "!")]``, kohya's cached files preferred."""
    from library.models.tokenizer import ClipTokenizer, resolve_tokenizer_dir

    out = []
    for kind, builtin in (("clip_l", ClipTokenizer.clip_l()), ("openclip_bigg", ClipTokenizer.openclip())):
        folder = resolve_tokenizer_dir(cache_dir, kind)  # kohya-compat: kohya's tokenizer cache folders
        out.append(builtin if folder is None else ClipTokenizer.from_dir(folder, pad_token_id=builtin.pad_token_id))
    return out


def chunk_ids(ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """``(B, max_length)`` ids -> ``(B, n, 77)`` chunks ``[BOS] + 75 tokens + [last]`` (TRAINING.md §3.1).

    When pad ≠ EOS a chunk ending ``<x> <PAD>`` gets EOS last and one starting ``<BOS> <PAD>`` gets EOS
    at position 1 (kohya-compat).
    """
    if ids.shape[1] <= CHUNK:
        return ids.unsqueeze(1)
    chunks = []
    for i in range(1, ids.shape[1] - CHUNK + 2, CHUNK - 2):
        chunk = torch.cat([ids[:, :1], ids[:, i:i + CHUNK - 2], ids[:, -1:]], dim=1)
        if pad_id != eos_id:
            chunk[(chunk[:, -2] != eos_id) & (chunk[:, -2] != pad_id), -1] = eos_id
            chunk[chunk[:, 1] == pad_id, 1] = eos_id
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def join_chunks(states: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B·n, 77, D)`` chunk states -> ``(B, 1 + 75·n + 1, D)`` (TRAINING.md §3.2); one chunk unchanged."""
    states = states.reshape(batch, -1, states.shape[-1])
    if states.shape[1] == CHUNK:
        return states
    parts = [states[:, :1]] + [states[:, i:i + CHUNK - 2] for i in range(1, states.shape[1], CHUNK)]
    return torch.cat(parts + [states[:, -1:]], dim=1)


def sdxl_text_encoder(text_encoders, tokenizers, max_token_length: int | None):
    """``captions -> (hidden1 (B, L, D1), hidden2 (B, L, D2), pool2 (B, P))`` on the CPU, float32.

    Args:
        text_encoders: ``[te1 CLIPTextModel, te2 CLIPTextModelWithProjection]``.
        tokenizers: from :func:`sdxl_tokenizers`.
        max_token_length: None (77 tokens), 150 or 225.
    """
    length = CHUNK if max_token_length is None else max_token_length + 2

    def encode(captions: list[str]):
        hidden, pooled = [], None
        for te, tok in zip(text_encoders, tokenizers):
            ids = chunk_ids(tok.tokenize(list(captions), max_length=length), tok.eos_token_id, tok.pad_token_id)
            n = ids.shape[1]
            out = te(ids.reshape(-1, CHUNK).to(next(te.parameters()).device), output_hidden_states=True)
            hidden.append(join_chunks(out.hidden_states[-2], len(captions)).float().cpu())
            pooled = getattr(out, "text_embeds", None)
            pooled = None if pooled is None else pooled[::n].float().cpu()
        return hidden[0], hidden[1], pooled

    return encode


def cache_all_outputs(args: argparse.Namespace) -> int:
    """Plan the dataset, load both text encoders and write every missing or stale cache; returns captions encoded."""
    if not args.sdxl:
        raise UserError("cache_text_encoder_outputs: text encoder output caches are SDXL only; pass --sdxl "
                        "with an SDXL checkpoint")
    seed, dataset_seed = seeds(args)
    datasets = build_datasets(args, seed, dataset_seed)
    models, device, dtype = load(args)
    for te in models.text_encoders:
        te.requires_grad_(False).eval().to(device, dtype if device.type != "cpu" else torch.float32)
    encode = sdxl_text_encoder(models.text_encoders, sdxl_tokenizers(args.tokenizer_cache_dir), args.max_token_length)
    count = 0
    for ds in datasets:
        count += latent_cache.cache_text_encoder_outputs(ds, encode, batch_size=args.vae_batch_size or 1, to_disk=True)
    return count


def _main(argv: list[str]) -> int:
    args = setup_parser(__doc__).parse_args(argv)
    if args.skip_existing:
        logger.warning("--skip_existing is deprecated; use --skip_cache_check")  # kohya-compat
    count = cache_all_outputs(args)
    print(f"text encoder outputs encoded: {count} (existing valid caches kept)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``cache_text_encoder_outputs``."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
