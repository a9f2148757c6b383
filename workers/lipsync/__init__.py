"""Lip-sync backends: re-animate the speaking character's mouth in a shot's clip to its lines."""
