"""Turning request values into engine inputs: tokenization, text cleaning, image decoding and
fetching image URLs under deadlines."""
