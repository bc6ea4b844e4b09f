# Sluice's image: deploy/docker-compose.yml builds it (`build: ..`). tests/test_dockerfile.py
# performs deploy/install.sh, the steps below, in a fresh directory and serves from there.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_URL=sqlite:////data/db.sqlite3

# The code stays root's (the server cannot rewrite it); the user writes only /data, where
# the SQLite default lives (compose sets DATABASE_URL to PostgreSQL).
RUN useradd --create-home --uid 10001 sluice && install -d -o sluice -g sluice /data
WORKDIR /app

# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml deploy/install.sh ./
RUN sh install.sh dependencies
COPY manage.py ./
COPY dashboard/ dashboard/
COPY limiter/ limiter/
COPY sandbox/ sandbox/
COPY templates/ templates/
COPY static/ static/
RUN sh install.sh static && rm install.sh

USER 10001
EXPOSE 8000
# Also what a load balancer should check: 503 while draining or when the database or the
# channel layer does not answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]
