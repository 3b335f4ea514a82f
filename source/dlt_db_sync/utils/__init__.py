"""Small shared helpers: logging setup and secret masking, number and time formatting, progress reporting."""
