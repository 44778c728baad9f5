"""Storages and the database that describes them must belong together: see service.py."""
