"""Work a server does besides answering requests: on-demand builds, syncing s3:// engines,
loading models for readiness."""
