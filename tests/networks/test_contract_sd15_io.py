"""Plugin contract suite on the tiny sd15 model: merge, save/load round trip, stacking."""

from contract_suite import ContractIO


class TestContractSd15IO(ContractIO):
    KIND = "sd15"
