"""Text in, tokens out: sources, tokenizers, preparation and the prepared folders.
Imports config and the ground floor. No torch."""
