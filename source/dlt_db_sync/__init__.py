"""DLT Database Sync Pipeline: keeps listed MySQL/MariaDB tables of a target in step with a source.

The package is laid out by concern (see the README, "Development"); ``db_pipeline.py`` next to it is
the entry point that wires the rooms together.
"""
