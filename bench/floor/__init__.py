"""The floor: a bare Django 5.2 project with one async view that forwards the POST to
the sandbox with one shared default `httpx.AsyncClient`. Run by daphne (and uvicorn) with
DJANGO_SETTINGS_MODULE=bench.floor.settings and FLOOR_UPSTREAM=<sandbox v1 url>."""
