"""Runnable examples built on tidings's public API."""
