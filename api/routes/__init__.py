"""HTTP routes: one module per route family, the request and response types, their decoding."""
