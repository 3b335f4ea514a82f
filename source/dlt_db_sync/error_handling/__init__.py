"""Errors: the one exception hierarchy, classification by MySQL error code, and the retry policy."""
