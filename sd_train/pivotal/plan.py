"""Which tokens a run adds and how captions and prompts name them, from the options alone (no model).

Pivotal tuning (``--train_text_encoder_ti``, diffusers' advanced-script names): each placeholder of
``--token_abstraction`` becomes ``--num_new_tokens_per_abstraction`` tokens ``<s0><s1>`` (the next
placeholder ``<s2><s3>`` …) written without a space, so a placeholder stays one tag. kohya's textual
inversion (``--token_string hoge --num_vectors_per_token 3``): the tokens are ``hoge hoge1 hoge2``, written
with spaces, and ``--use_object_template`` / ``--use_style_template`` replace every caption.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from library.dataset.captions import CaptionRewrite
from library.errors import UserError
from sd_train.options.pivotal import embedding_sibling

# kohya-compat: the caption templates of kohya's textual-inversion scripts ({} is the token string)
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}")
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}", "a large painting in the style of {}")
DEFAULT_PLACEHOLDER = "TOK"  # diffusers' --token_abstraction default


@dataclass(frozen=True)
class TokenPlan:
    """The new tokens of a run.

    Attributes:
        placeholders: ``{placeholder: its new token strings}`` in order.
        joiner: between a placeholder's tokens when a caption is rewritten (``""`` pivotal, ``" "`` kohya).
        initializer: words whose embeddings start the rows, or ``None`` (random).
        cycle_init: kohya's ``--init_word``: row ``i`` copies the word's token ``i % len``; else per token
            when the counts match and the words' mean otherwise.
        templates: kohya's caption templates with the placeholder in them (empty: the captions are used).
        train: the rows train (else they stay as loaded).
        lr: the rows' learning rate (``None``: the optimizer's default, ``--learning_rate``).
        stop_fraction: they train during the first ``ceil(fraction × max_train_steps)`` steps.
        norm_clip: ``--ti_norm_clip`` or ``None``.
        weights: embedding file the rows start from, or ``None``.
        bundle: also write them into the LoRA as ``bundle_emb`` keys.
    """

    placeholders: dict[str, tuple[str, ...]]
    joiner: str = ""
    initializer: str | None = None
    cycle_init: bool = False
    templates: tuple[str, ...] = ()
    train: bool = True
    lr: float | None = None
    stop_fraction: float = 1.0
    norm_clip: float | None = None
    weights: str | None = None
    bundle: bool = False

    @property
    def tokens(self) -> list[str]:
        """Every new token string, placeholder by placeholder (the order of the rows)."""
        return [t for tokens in self.placeholders.values() for t in tokens]

    def caption_rewrite(self) -> CaptionRewrite:
        """What the datasets apply to every caption (placeholders, kohya's templates)."""
        pairs = tuple((p, self.joiner.join(tokens)) for p, tokens in self.placeholders.items())
        return CaptionRewrite(replacements=pairs, templates=self.templates)

    def rewrite_prompt(self, text: str) -> str:
        """A sample prompt with its placeholders replaced by their tokens."""
        return self.caption_rewrite().replace(text)

    def stop_step(self, max_train_steps: int) -> int:
        """Optimizer steps during which the rows train."""
        return math.ceil(self.stop_fraction * max_train_steps) if self.train else 0

    def metadata(self, init: str) -> dict[str, str]:
        """``ss_*`` keys of a LoRA trained with these tokens (``init``: how the rows started)."""
        return {"ss_token_abstraction": placeholders_json(self.placeholders),
                "ss_num_new_tokens_per_abstraction": str(len(next(iter(self.placeholders.values())))),
                "ss_initializer_concept": self.initializer or "", "ss_ti_init": init,
                "ss_train_text_encoder_ti": str(self.train), "ss_ti_lr": str(self.lr),
                "ss_train_text_encoder_ti_frac": str(self.stop_fraction)}

    @classmethod
    def from_options(cls, opts) -> "TokenPlan | None":
        """The plan of a run's :class:`sd_train.options.TrainOptions`, or ``None`` when it adds no tokens."""
        ti, pv = opts.textual_inversion, opts.pivotal
        if ti.token_string:
            return _kohya_plan(ti)
        if not (pv.token_abstraction or pv.train_text_encoder_ti):
            return None
        names = [p.strip() for p in re.split(r",\s*", pv.token_abstraction or DEFAULT_PLACEHOLDER) if p.strip()]
        if not names or len(set(names)) != len(names) or any(re.search(r"[\s.,]", p) for p in names):
            raise UserError(f"--token_abstraction {pv.token_abstraction!r}: give distinct words without spaces or "
                            "dots, separated by commas (TOK or TOK,TOK2)")
        n = pv.num_new_tokens_per_abstraction
        placeholders = {p: tuple(f"<s{k}>" for k in range(i * n, (i + 1) * n)) for i, p in enumerate(names)}
        te_lr = opts.optimizer.text_encoder_lr
        te_lr = te_lr[0] if isinstance(te_lr, (list, tuple)) and te_lr else te_lr
        lr = next((x for x in (pv.ti_lr, te_lr, opts.optimizer.learning_rate) if x is not None), None)
        weights = pv.embedding_weights or embedding_sibling(opts.network.network_weights)
        return cls(placeholders, initializer=pv.initializer_concept, train=pv.train_text_encoder_ti, lr=lr,
                   stop_fraction=pv.train_text_encoder_ti_frac, norm_clip=pv.ti_norm_clip,
                   weights=str(weights) if weights else None, bundle=pv.bundle_embeddings)


def placeholders_json(placeholders: dict[str, tuple[str, ...]]) -> str:
    """``ss_token_abstraction``: ``{"TOK": ["<s0>", "<s1>"]}`` as JSON."""
    return json.dumps({p: list(t) for p, t in placeholders.items()})


def _kohya_plan(ti) -> TokenPlan:
    """kohya's textual inversion: ``hoge``, ``hoge1``, … written with spaces, trained for the whole run."""
    token = ti.token_string
    if re.search(r"[\s,]", token):
        raise UserError(f"--token_string {token!r}: use one word without spaces or commas")
    tokens = (token, *(f"{token}{i + 1}" for i in range(ti.num_vectors_per_token - 1)))
    chosen = OBJECT_TEMPLATES if ti.use_object_template else STYLE_TEMPLATES if ti.use_style_template else ()
    return TokenPlan({token: tokens}, joiner=" ", initializer=ti.init_word, cycle_init=True,
                     templates=tuple(t.format(token) for t in chosen), weights=ti.weights)

