"""Grain sources, transforms and loaders."""
