"""LoRA files and the math on their factors, shared by ``networks`` and ``tools``.

What lives here: reading/writing LoRA ``.safetensors`` files (``file``), ΔW, merging and scaling
(``algebra``), low-rank SVD for resizing and merging (``svd``), key-layout conversion between
kohya, diffusers/PEFT and other UIs (``convert``) and the size of a LoRA before it exists, from a
checkpoint's header (``estimate``).

May import: ``library.io``, ``library.checkpoint.keymaps``, ``library.models``, ``library.errors``.
"""
