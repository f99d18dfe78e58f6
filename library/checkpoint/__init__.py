"""Base-model checkpoints: reading and writing single files and diffusers folders.

What lives here: loading a checkpoint into sd-train's models (``io``; ``assemble`` builds the modules
and fills them, for single files and diffusers folders alike), converting between the
LDM/SGM and diffusers layouts (``convert``, ``keymaps``), diffusers folders in and out
(``diffusers_folder``, ``diffusers_export``, ``pipelines``) and hub downloads (``hub``).

May import: ``library.io``, ``library.models``, ``library.text``, ``library.errors``.
"""
