"""New-token options: pivotal tuning in the network trainers and kohya's textual-inversion flags.

``PivotalOptions`` belongs to ``train_network.py`` / ``sdxl_train_network.py`` (diffusers' advanced SDXL
script names its flags so); ``TextualInversionOptions`` are kohya's flags of ``train_textual_inversion.py``
/ ``sdxl_train_textual_inversion.py``. Their cross-flag rules (:func:`rules`) run before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sd_train.options.base import flag, opt

EMBEDDING_NETWORK = "sd_train.pivotal.network"  # the plugin the textual-inversion entry points train


@dataclass(frozen=True)
class PivotalOptions:
    """Pivotal tuning: new tokens trained together with the network."""

    token_abstraction: str | None = opt(
        None, "Placeholder words, comma-separated (TOK or TOK,TOK2), as written in captions, class_tokens, "
        "prefixes and sample prompts; each becomes --num_new_tokens_per_abstraction new tokens <s0><s1>...", ours=True)
    num_new_tokens_per_abstraction: int = opt(2, "New tokens per placeholder word", type=int, ours=True)
    initializer_concept: str | None = opt(
        None, "Start the new tokens from these words' embeddings (one per token when the counts match, else "
        "their mean); unset: random rows scaled to the embedding table's standard deviation", ours=True)
    train_text_encoder_ti: bool = flag(
        "Pivotal tuning: train the new tokens' embedding rows together with the network (every other row "
        "stays bit-identical); --token_abstraction defaults to TOK", ours=True)
    ti_lr: float | None = opt(None, "Learning rate of the new embedding rows (default: --text_encoder_lr, else "
                                    "--learning_rate)", type=float, ours=True)
    train_text_encoder_ti_frac: float = opt(
        0.5, "Train the embedding rows for this fraction of the optimizer steps, then keep them fixed", type=float,
        ours=True)
    ti_norm_clip: float | None = opt(
        None, "After each step, shrink any new row whose L2 norm exceeds this multiple of the mean row norm of "
        "its text encoder's vocabulary (e.g. 1.5); unset: no clipping", type=float, ours=True)
    embedding_weights: str | None = opt(
        None, "Embedding file to start the new tokens from (an earlier run's _emb file; default: the "
        "{name}_emb.safetensors beside --network_weights when it exists)", ours=True)
    bundle_embeddings: bool = flag(
        "Also store the rows inside the LoRA as bundle_emb.<TOK>.* keys, which A1111 loads with the LoRA; "
        "off by default because diffusers' load_lora_weights rejects LoRA files with such keys", ours=True)


@dataclass(frozen=True)
class TextualInversionOptions:
    """kohya's textual-inversion flags (``train_textual_inversion.py``)."""

    token_string: str | None = opt(
        None, "Token trained (not a word the tokenizer knows); captions use it; default --output_name", common=True)
    init_word: str | None = opt(
        None, "Words whose embeddings start the vectors (repeated or cut to --num_vectors_per_token)", common=True)
    num_vectors_per_token: int = opt(1, "Vectors (tokens) of the embedding", type=int, common=True)
    weights: str | None = opt(None, "Embedding file to continue training from")
    use_object_template: bool = flag("Ignore captions; train with kohya's object templates ('a photo of a {}')")
    use_style_template: bool = flag("Ignore captions; train with kohya's style templates ('a painting in the "
                                    "style of {}')")


def new_tokens(v: dict[str, Any]) -> bool:
    """Whether a run adds tokens (pivotal tuning, frozen placeholders or textual inversion)."""
    return bool(v.get("token_abstraction") or v.get("train_text_encoder_ti") or v.get("token_string"))


def embedding_sibling(network_weights: str | None) -> Path | None:
    """The ``{stem}_emb.safetensors`` written beside a pivotal LoRA, when ``network_weights`` has one."""
    from sd_train.checkpointing import embedding_file

    sibling = embedding_file(network_weights) if network_weights else None
    return sibling if sibling is not None and sibling.is_file() else None


def _frozen_without_weights(v: dict, entry: str) -> bool:
    return bool(v.get("token_abstraction") and not v.get("train_text_encoder_ti") and not v.get("embedding_weights")
                and not embedding_sibling(v.get("network_weights")))


def _embeddings_only(entry: str) -> bool:
    from sd_train.families import family_class

    return family_class(entry).embeddings_only


def rules() -> list[tuple[str, Callable[[dict, str], bool], str]]:
    """``(level, condition(values, entry), message)`` of the new-token options (see ``options.rules``)."""
    return [
        ("error", lambda v, e: new_tokens(v) and bool(v.get("cache_text_encoder_outputs")),
         "--cache_text_encoder_outputs cannot be used with new tokens (--train_text_encoder_ti, "
         "--token_abstraction, --token_string): their embeddings change what the text encoders output; drop it"),
        ("error", lambda v, e: v.get("num_new_tokens_per_abstraction", 1) < 1,
         "--num_new_tokens_per_abstraction must be at least 1"),
        ("error", lambda v, e: v.get("num_vectors_per_token", 1) < 1, "--num_vectors_per_token must be at least 1"),
        ("error", lambda v, e: not 0 < v.get("train_text_encoder_ti_frac", 1.0) <= 1,
         "--train_text_encoder_ti_frac must be in (0, 1]"),
        ("error", lambda v, e: (v.get("ti_lr") or 0) < 0, "--ti_lr must not be negative"),
        ("error", lambda v, e: v.get("ti_norm_clip") is not None and v["ti_norm_clip"] <= 0,
         "--ti_norm_clip must be positive"),
        ("error", _frozen_without_weights,
         "--token_abstraction without --train_text_encoder_ti would use random, untrained tokens; add "
         "--train_text_encoder_ti, or --embedding_weights with trained ones"),
        ("error", lambda v, e: (v.get("bundle_embeddings") or v.get("embedding_weights")) and not new_tokens(v),
         "--bundle_embeddings / --embedding_weights need new tokens: add --train_text_encoder_ti"),
        ("error", lambda v, e: _embeddings_only(e) and not v.get("token_string"),
         "textual inversion needs --token_string (the word your captions use for the concept)"),
        ("error", lambda v, e: bool(v.get("use_object_template") and v.get("use_style_template")),
         "--use_object_template and --use_style_template are both set; keep one"),
        ("warning", lambda v, e: (v.get("ti_lr") is not None or v.get("initializer_concept")) and not new_tokens(v),
         "--ti_lr / --initializer_concept are ignored without --train_text_encoder_ti"),
    ]


def normalize(values: dict[str, Any], entry: str) -> None:
    """In place: kohya's textual-inversion defaults (the embedding plugin, ``--output_name`` = the token).

    Raises:
        UserError: ``--embedding_weights`` / ``--weights`` names a file that does not exist.
    """
    from library.errors import UserError

    for name in ("embedding_weights", "weights"):
        if values.get(name) and not Path(values[name]).is_file():
            raise UserError(f"{values[name]}: embedding file not found (--{name})")
    if not _embeddings_only(entry):
        return
    values["network_module"] = EMBEDDING_NETWORK
    if not values.get("output_name") and values.get("token_string"):
        values["output_name"] = values["token_string"]  # kohya-compat
