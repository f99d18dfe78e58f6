"""Convert a textual-inversion embedding between layouts: ``convert_embedding IN OUT --to LAYOUT`` (sd-train).

Reads any layout (see ``library.embeddings.files``): kohya / A1111 / ComfyUI ``.safetensors`` (``emb_params``,
or ``clip_l`` + ``clip_g`` for SDXL), A1111 ``.pt`` (``string_to_param``, read with ``weights_only=True``),
diffusers ``learned_embeds.safetensors`` / ``.bin`` (an SDXL pair ``learned_embeds_2.*`` is picked up), or a
LoRA with ``bundle_emb`` keys (``--name`` picks the embedding). Writes ``--to``:

- ``kohya``: ``emb_params`` / ``clip_l`` + ``clip_g`` as ``.safetensors`` (or a ``.pt`` dict): A1111, ComfyUI;
- ``a1111``: A1111's ``.pt`` ``string_to_param`` dict (one text encoder);
- ``diffusers``: ``{token: vectors}`` for ``load_textual_inversion``; SDXL also writes ``{stem}_2{suffix}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from library.embeddings.files import LAYOUTS, read_embedding, write_embedding
from library.errors import UserError, run_cli
from tools._common import PRECISIONS, add_common, dtype_of


def setup_parser() -> argparse.ArgumentParser:
    """Input, output, layout, names and precision."""
    p = argparse.ArgumentParser(prog="convert_embedding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="embedding file (.safetensors, .pt, .bin) or a LoRA with bundle_emb keys")
    p.add_argument("output", help="file to write (.safetensors, or .pt for a .pt dict)")
    p.add_argument("--to", choices=LAYOUTS, default="kohya", help="layout to write (default: kohya)")
    p.add_argument("--name", default=None, help="the bundled embedding to take from a LoRA file")
    p.add_argument("--token", default=None,
                   help="token / name stored in the output (diffusers key, A1111 name); default: the input's name")
    p.add_argument("--save_precision", choices=PRECISIONS, default=None, help="dtype of the written vectors")
    add_common(p, device=False)
    return p


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    emb = read_embedding(args.input, args.name)
    if args.token:
        emb.name = args.token
    out = Path(args.output)
    targets = [out] + ([out.with_name(f"{out.stem}_2{out.suffix}")] if args.to == "diffusers" and
                       len(emb.vectors) == 2 else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{existing[0]}: already exists; pass --overwrite to replace it")
    if Path(args.input).resolve() in [t.resolve() for t in targets]:
        raise UserError(f"{args.output}: is the input file; choose another output path")
    written = write_embedding(emb, out, args.to, token=emb.name, dtype=dtype_of(args.save_precision))
    widths = " + ".join(str(v.shape[1]) for v in emb.vectors)
    print(f"wrote {', '.join(map(str, written))}: {args.to} layout, {emb.count} vectors of width {widths}, "
          f"name {emb.name!r}")
    return 0


def main(argv=None) -> int:
    """Console entry point (``convert_embedding``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
