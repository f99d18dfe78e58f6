"""Text: the offline CLIP tokenizer, caption-to-conditioning chunking and prompt weights.

What lives here: ``tokenizer`` (CLIP BPE built from the vocabulary open-clip-torch ships),
``conditioning`` (75-token chunking, re-joining, SDXL's two-encoder conditioning) and
``prompt_weights`` (A1111 ``(word:1.2)`` syntax as kohya's ``--weighted_captions`` reads it).

May import: ``library.models.families`` (which tokenizer each family uses), ``library.errors``.
"""
