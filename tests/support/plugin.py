"""Shared pytest fixtures registered for the whole suite (extended by other plugins)."""
