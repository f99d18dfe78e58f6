"""Plugin contract suite on the tiny sdxl model: merge, save/load round trip, stacking."""

from contract_suite import ContractIO


class TestContractSdxlIO(ContractIO):
    KIND = "sdxl"
