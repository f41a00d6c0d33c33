"""The Falcon app: routes, request parsing and validation, errors, and the gunicorn runner."""
