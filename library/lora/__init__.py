"""LoRA files and the math on their factors, shared by ``networks`` and ``tools``.

What lives here: reading/writing LoRA ``.safetensors`` files (``file``), ΔW, merging and scaling
(``algebra``), low-rank SVD for resizing and merging (``svd``) and key-layout conversion between
kohya, diffusers/PEFT and other UIs (``convert``).

May import: ``library.io``, ``library.checkpoint.keymaps``, ``library.models``, ``library.errors``.
"""
