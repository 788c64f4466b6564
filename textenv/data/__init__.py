"""Data files shipped with textenv (prompt sets)."""
