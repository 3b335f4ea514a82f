"""Sync strategies: one class per way of syncing a table (see ``base`` for the interface)."""
