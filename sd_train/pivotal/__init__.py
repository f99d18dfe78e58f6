"""New tokens in training: pivotal tuning in the network trainers and kohya's textual inversion.

What lives here: ``plan`` (which tokens, how captions and prompts name them; options only), ``network``
(the tokens' embedding rows as a network plugin), ``host`` (the plugin host of a pivotal run) and
:func:`setup`, the trainer's one call: tokens into every tokenizer of the family, rows into every text
encoder, captions rewritten, the rows joined to the network's optimizer and saves.

May import: ``library``, ``sd_train``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from library.embeddings.files import read_embedding
from library.embeddings.rows import add_rows, concept_rows, random_rows
from library.errors import UserError
from sd_train.pivotal.host import PivotalHost
from sd_train.pivotal.network import EmbeddingNetwork
from sd_train.pivotal.plan import TokenPlan

logger = logging.getLogger(__name__)
STATE_FILE = "embeddings.safetensors"  # the rows of a pivotal run inside a state folder


class Pivot:
    """The new tokens of a running trainer (see :func:`setup`)."""

    def __init__(self, plan: TokenPlan, embeddings: EmbeddingNetwork, beside_network: bool):
        self.plan, self.embeddings, self.beside_network = plan, embeddings, beside_network

    @property
    def training(self) -> bool:
        """The rows train in this run (gradients flow through the text encoders)."""
        return self.plan.train

    def after_step(self) -> None:
        """After each optimizer step: clip the rows' norms (``--ti_norm_clip``)."""
        self.embeddings.after_optimizer_step()

    def rewrite_prompt(self, prompt):
        """A :class:`sd_train.sampling.SamplePrompt` with placeholders replaced by their tokens."""
        return replace(prompt, prompt=self.plan.rewrite_prompt(prompt.prompt),
                       negative_prompt=self.plan.rewrite_prompt(prompt.negative_prompt))

    def save_state(self, folder: Path) -> None:
        """Write the rows into a state folder (textual inversion: they are the network's state already)."""
        if self.beside_network:
            rows = {k: v.detach().contiguous().cpu() for k, v in self.embeddings.state_dict().items()}
            save_safetensors(rows, str(Path(folder) / STATE_FILE))

    def load_state(self, folder: Path) -> None:
        """Restore the rows of a pivotal run's state folder (bit-exact resume)."""
        if not self.beside_network:
            return
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise UserError(f"--resume {folder}: no {STATE_FILE}; the state was not saved by a pivotal-tuning run")
        self.embeddings.load_state_dict(load_safetensors(str(path)))


def _initial_rows(plan: TokenPlan, tokenizer, table: torch.Tensor, gen: torch.Generator,
                  first: bool) -> tuple[torch.Tensor, str]:
    """``((n, D) rows, how)`` of one text encoder: from the initializer words, else random (``first``: the
    first text encoder, which reports a word count that does not fit)."""
    if not plan.initializer:
        return random_rows(table, len(plan.tokens), gen), "random"
    ids = tokenizer.encode_without_specials(plan.initializer)
    if not ids:
        raise UserError(f"initializer {plan.initializer!r}: has no tokens; give words")
    blocks, how = [], "per_token"
    for tokens in plan.placeholders.values():
        mean = not plan.cycle_init and len(ids) != len(tokens)
        how = "cycle" if plan.cycle_init else "mean" if mean else how
        blocks.append(concept_rows(table, ids, len(tokens), mean))
    if first and plan.cycle_init and len(ids) != len(plan.tokens):
        logger.warning("--init_word has %d tokens for %d vectors; its tokens are repeated or cut", len(ids),
                       len(plan.tokens))
    return torch.cat(blocks), how


def setup(trainer) -> Pivot | None:
    """Add the run's new tokens (none: ``None``). Call after the network is created and applied.

    Adds the tokens to every tokenizer of the family (ids after the vocabulary) and their rows to every
    text encoder (from ``--initializer_concept`` / ``--init_word``, an embedding file, or random), rewrites
    the datasets' captions, and joins the rows to the network: a textual-inversion run's plugin *is* the
    rows; a pivotal run's host becomes a :class:`PivotalHost`.
    """
    plan = TokenPlan.from_options(trainer.opts)
    if plan is None:
        return None
    gen = torch.Generator().manual_seed(trainer.seed)
    modules, how = [], "random"
    for i, (tokenizer, te) in enumerate(zip(trainer.family.tokenizers(), trainer.models.text_encoders)):
        tokenizer.add_tokens(plan.tokens)
        rows, how = _initial_rows(plan, tokenizer, te.get_input_embeddings().weight, gen, first=i == 0)
        modules.append(add_rows(te, rows))
    standalone = isinstance(trainer.host.network, EmbeddingNetwork)
    embeddings = trainer.host.network if standalone else EmbeddingNetwork()
    embeddings.bind(modules, plan.placeholders, plan.lr,
                    active=lambda: trainer.progress.global_step < plan.stop_step(trainer.max_train_steps),
                    norm_clip=plan.norm_clip)
    if plan.weights:
        embeddings.set_vectors(read_embedding(plan.weights), plan.weights)
        how = f"file:{Path(plan.weights).name}"
        logger.info("new tokens start from %s", plan.weights)
    if not standalone:
        trainer.host = PivotalHost(trainer.host, embeddings, plan, how)
    for dataset in filter(None, (trainer.dataset, trainer.val_dataset)):
        dataset.caption_rewrite = plan.caption_rewrite()
    logger.info("new tokens %s (%s init)", ", ".join(f"{p} -> {' '.join(t)}" for p, t in plan.placeholders.items()),
                how)
    return Pivot(plan, embeddings, beside_network=not standalone)
