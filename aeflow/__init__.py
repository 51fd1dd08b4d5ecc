"""aeflow aeflow package."""
