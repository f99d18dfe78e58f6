"""The textual-inversion entry points (kohya's ``train_textual_inversion.py`` and
``sdxl_train_textual_inversion.py``): the SD and SDXL strategies, with a command line of their own.

Only new token embeddings train (through the ``sd_train.pivotal.network`` plugin); the network options
and the pivotal-tuning options are not on their command line, kohya's textual-inversion flags are.
"""

from __future__ import annotations

from sd_train.families.sd import SdFamily
from sd_train.families.sdxl import SdxlFamily


class _TextualInversion:
    """What the textual-inversion scripts share (mixed into a family class)."""

    embeddings_only = True
    excluded_option_groups = ("network", "pivotal")
    option_defaults = {"save_model_as": "pt"}  # kohya-compat: its textual-inversion scripts default to .pt
    script_attr = "ti_script"


class SdTextualInversion(_TextualInversion, SdFamily):
    """``train_textual_inversion.py``: SD1 (``--v2``: SD2) embeddings, ``emb_params`` files."""

    entry = "sd_ti"


class SdxlTextualInversion(_TextualInversion, SdxlFamily):
    """``sdxl_train_textual_inversion.py``: SDXL embeddings, ``clip_l`` + ``clip_g`` files."""

    entry = "sdxl_ti"
