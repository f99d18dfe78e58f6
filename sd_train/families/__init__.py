"""Model families: the one place where the training path differs between SD1/SD2 and SDXL.

What lives here: the strategy object (``base.ModelFamily``) and one subclass per trainer script
(``sd``, ``sdxl`` and the textual-inversion scripts ``sd_ti``, ``sdxl_ti``). Anything else in ``sd_train``
asks the family object (a property or method) instead of comparing family names; facts that ``library``
and ``networks`` need too (key prefixes, latent scale, metadata strings) come from
``library.models.families``, which these classes wrap.

May import: ``library``.
"""

from __future__ import annotations

from sd_train.families.base import ModelFamily
from sd_train.families.sd import SdFamily
from sd_train.families.sdxl import SdxlFamily
from sd_train.families.textual_inversion import SdTextualInversion, SdxlTextualInversion

ENTRIES: dict[str, type[ModelFamily]] = {
    cls.entry: cls for cls in (SdFamily, SdxlFamily, SdTextualInversion, SdxlTextualInversion)}


def family_class(entry: str) -> type[ModelFamily]:
    """The family class of a trainer entry point (``ENTRIES``: ``sd`` = train_network.py, ``sdxl``,
    ``sd_ti`` = train_textual_inversion.py, ``sdxl_ti``).

    Raises:
        ValueError: an unknown entry name.
    """
    if entry not in ENTRIES:
        raise ValueError(f"entry must be one of {', '.join(repr(e) for e in ENTRIES)}, not {entry!r}")
    return ENTRIES[entry]
