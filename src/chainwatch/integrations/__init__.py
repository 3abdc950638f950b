"""Framework integrations: each turns one framework's events into recorder calls."""
