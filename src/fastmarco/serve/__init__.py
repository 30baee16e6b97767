"""`fastmarco serve`: the Engine behind HTTP, with dynamic batching (see `app.create_app`)."""
