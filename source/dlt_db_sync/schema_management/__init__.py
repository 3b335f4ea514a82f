"""Table definitions: reading them, creating target tables, evolving them, DDL translation between dialects."""
