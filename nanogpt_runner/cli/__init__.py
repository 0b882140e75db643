"""Argument parsing for the console scripts, nothing else; nothing imports cli/.
Imports any package."""
