"""Command-line commands that live in their own module (loaded on use)."""
