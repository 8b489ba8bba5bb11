"""`dior-search serve`: the HTTP API and web page over a Searcher (starlette, uvicorn)."""
