"""Plugin contract suite on the tiny sdxl model: identity, multiplier 0, one step, restore."""

from contract_suite import ContractCore


class TestContractSdxlCore(ContractCore):
    KIND = "sdxl"
