"""Running the app under gunicorn: the hardened worker, the server, heap trimming, logs."""
