"""Plugin contract suite on the toy model (kohya class names on tiny Linear/Conv2d layers)."""

from contract_suite import ContractCore, ContractIO


class TestContractToyCore(ContractCore):
    KIND = "toy"


class TestContractToyIO(ContractIO):
    KIND = "toy"
