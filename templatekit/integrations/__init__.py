"""Drop-in replacements for other training libraries' masking helpers (see `unsloth.py`)."""
