"""Plugin contract suite on the tiny sd15 model: identity, multiplier 0, one step, restore."""

from contract_suite import ContractCore


class TestContractSd15Core(ContractCore):
    KIND = "sd15"
