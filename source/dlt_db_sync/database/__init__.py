"""Database access: engines and connections, the server dialect (MySQL or MariaDB), server facts, the sync state table and leases."""
