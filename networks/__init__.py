"""Network-module plugins; every module here is valid as ``--network_module``.

A plugin learns what it needs from the modules it is given (class names, module tree), never from
a family name.

May import: ``library``.
"""
