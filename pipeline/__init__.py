"""aeflow pipeline package."""
