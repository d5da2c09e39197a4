"""`falcon-desktop ui`: a local web app over the same library calls as the CLI (see `server.py`)."""
