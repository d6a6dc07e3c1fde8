"""Transaction assembly: decoded messages -> committed transactions in commit order.

See :mod:`pgferry.assembler.core` for the contract.
"""

from pgferry.assembler.core import (
    Assembler,
    StreamConsumer,
    Transaction,
    TransactionConsumer,
    delivery_position,
)
from pgferry.assembler.spool import Spool

__all__ = [
    "Assembler",
    "Spool",
    "StreamConsumer",
    "Transaction",
    "TransactionConsumer",
    "delivery_position",
]
