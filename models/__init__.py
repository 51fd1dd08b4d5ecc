"""aeflow models package."""
