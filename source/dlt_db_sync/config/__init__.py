"""Configuration: the frozen settings built once from the environment, and the tables file."""
