"""Moving rows: extraction from the source, value encoding, sanitization, file staging and the target loader."""
