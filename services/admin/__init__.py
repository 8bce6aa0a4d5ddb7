"""The admin service: one HTTP front for health, status, metrics and stream management."""
