"""Write SDXL text-encoder output caches, as a training run with ``--cache_text_encoder_outputs_to_disk`` would.

Same flags as cache_latents (training's dataset flags, ``--max_token_length``,
``--tokenizer_cache_dir``, ``--mixed_precision``). Files are ``{stem}_te_outputs.npz`` next to each
image with keys ``hidden_state1 (L, D1)``, ``hidden_state2 (L, D2)``, ``pool2 (P,)`` and the caption
hash; a file whose caption still matches is kept, so a second run encodes nothing.

The SDXL conditioning (chunking of long captions, penultimate hidden states of both encoders,
TE2's projected pooled output of the first chunk) comes from ``library.text.conditioning``, the
same code ``sd_train.families.sdxl.SdxlFamily.encode`` uses.

Usage: ``cache_text_encoder_outputs --pretrained_model_name_or_path M.safetensors --dataset_config D.toml --sdxl``.
"""

from __future__ import annotations

import argparse
import logging

import torch

from library.dataset import latent_cache
from library.errors import UserError, run_cli
from library.text.prompt_weights import apply_token_weights, tokenize_chunks_weighted
from library.text.conditioning import CHUNK, chunk_token_ids, encode_sdxl, load_tokenizer
from tools.cache_latents import build_datasets, load, seeds, setup_parser

logger = logging.getLogger(__name__)


def sdxl_tokenizers(cache_dir: str | None) -> list:
    """``[CLIP-L (pads with EOS), OpenCLIP-bigG (pads with "!")]``, kohya's cached files preferred."""
    return [load_tokenizer("clip_l", cache_dir), load_tokenizer("openclip_bigg", cache_dir)]


def sdxl_text_encoder(text_encoders, tokenizers, max_token_length: int | None, weighted: bool = False):
    """``captions -> (hidden1 (B, L, D1), hidden2 (B, L, D2), pool2 (B, P))`` on the CPU, float32.

    Args:
        text_encoders: ``[te1 CLIPTextModel, te2 CLIPTextModelWithProjection]``.
        tokenizers: from :func:`sdxl_tokenizers`.
        max_token_length: None (77 tokens), 150 or 225.
        weighted: parse A1111 attention weights and multiply each encoder's states by them
            (``--weighted_captions``, TRAINING.md §3.1; the pooled output is not weighted).
    """
    length = CHUNK if max_token_length is None else max_token_length + 2

    def encode(captions: list[str]):
        if weighted:
            tokens, weights = zip(*(tokenize_chunks_weighted(tok, list(captions), length) for tok in tokenizers))
        else:
            tokens = [chunk_token_ids(tok.tokenize(list(captions), max_length=length), tok.eos_token_id,
                                      tok.pad_token_id) for tok in tokenizers]
        h1, h2, pooled = encode_sdxl(text_encoders, list(tokens))
        if weighted:
            h1, h2 = apply_token_weights(h1, weights[0]), apply_token_weights(h2, weights[1])
        return tuple(t.float().cpu() for t in (h1, h2, pooled))

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
    encode = sdxl_text_encoder(models.text_encoders, sdxl_tokenizers(args.tokenizer_cache_dir), args.max_token_length,
                               args.weighted_captions)
    variant = "weighted" if args.weighted_captions else ""
    count = 0
    for ds in datasets:
        count += latent_cache.cache_text_encoder_outputs(ds, encode, batch_size=args.vae_batch_size or 1, to_disk=True,
                                                         variant=variant)
    return count


def _main(argv: list[str]) -> int:
    parser = setup_parser(__doc__)
    parser.add_argument("--weighted_captions", action="store_true",
                        help="A1111 attention weights such as (word:1.2) in captions (as in training)")
    args = parser.parse_args(argv)
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
