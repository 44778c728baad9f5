"""Observability: metrics and logs. A leaf: every package may use it, it uses none of them."""
