"""Verification: chunked checksum comparison of source and target, repair, reconciliation and the continuous sweep."""
