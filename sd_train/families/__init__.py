"""Model families: the one place where the training path differs between SD1/SD2 and SDXL.

What lives here: the strategy object (``base.ModelFamily``) and one subclass per trainer script
(``sd``, ``sdxl``). Anything else in ``sd_train`` asks the family object (a property or method) instead
of comparing family names; facts that ``library`` and ``networks`` need too (key prefixes, latent
scale, metadata strings) come from ``library.models.families``, which these classes wrap.

May import: ``library``.
"""
