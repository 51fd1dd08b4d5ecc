"""aeflow flows package."""
