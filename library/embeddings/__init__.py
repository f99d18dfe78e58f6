"""Textual-inversion embeddings: new token rows in a text encoder and the files that carry them.

What lives here: ``rows`` (a frozen token table with trainable rows for added token ids, and the ways to
initialise them) and ``files`` (every embedding file layout A1111, ComfyUI, kohya and diffusers read and
write, the LoRA ``bundle_emb`` keys, reading with ``weights_only=True`` and converting between them).
The embedding keys of each family (``emb_params``, ``clip_l``, ``clip_g``) come from its
``library.models.families`` description.

May import: ``library.io``, ``library.models``, ``library.text``, ``library.errors``.
"""
