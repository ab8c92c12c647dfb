"""taskapi: the reference system (a FastAPI Task API and five fan-out services)."""
