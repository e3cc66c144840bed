"""The shop's own count for the lab (``"witness"`` in a chaos probe): how often each order is in its table.

The lab calls ``orders_seen`` after a chaos run with the ids it sent as order ids, and sets the table's count
beside its ledger: an order charged twice, or one the ledger saw finish but the table never got, shows there.
"""

from .tasks import _connect


def orders_seen(order_ids: list[str]) -> list[str]:
    """One entry per recorded row of these orders (an order recorded twice appears twice)."""
    wanted = set(order_ids)
    with _connect() as conn:
        return [row[0] for row in conn.execute("SELECT order_id FROM orders") if row[0] in wanted]
