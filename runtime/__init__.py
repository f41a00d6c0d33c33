"""Engine directory -> backends -> models: everything a serving process needs (no torch)."""
