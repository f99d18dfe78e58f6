"""Network-module plugins; every module here is valid as ``--network_module``."""
