"""Binlog change capture: ``stream`` (the thread and its loop), ``apply`` (batches, atomic apply with the position), ``snapshot``, ``ddl``, ``lease``, ``tables``."""
