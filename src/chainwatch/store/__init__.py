"""Storage: migrations, the writer thread and the read queries."""
