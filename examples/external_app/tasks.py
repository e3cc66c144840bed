"""The shop's tasks. Each order is a row in a SQLite table: a side effect anyone can count."""

import os
import sqlite3
import time

from .celery import app

SCHEMA = "CREATE TABLE IF NOT EXISTS orders (order_id TEXT, amount_cents INTEGER, pid INTEGER, at REAL)"


def db_path() -> str:
    return os.environ.get("SHOP_DB", "shop.db")


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(db_path(), timeout=30)
    conn.execute(SCHEMA)
    return conn


@app.task(name="shop.record_order")
def record_order(order_id: str, amount_cents: int = 1000) -> str:
    """Charge an order (a call to a payment provider: ~50 ms) and record it."""
    time.sleep(0.05)
    with _connect() as conn:
        conn.execute("INSERT INTO orders VALUES (?, ?, ?, ?)", (order_id, amount_cents, os.getpid(), time.time()))
    return order_id


@app.task(name="shop.count_orders")
def count_orders() -> int:
    with _connect() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0])
