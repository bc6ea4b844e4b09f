#!/bin/sh
# The image's install steps: the Dockerfile runs them, and so does tests/test_dockerfile.py
# in a fresh directory (no container engine runs where Sluice is developed). Run from the
# application directory with the Python that is to run Sluice first on PATH.
#   install.sh dependencies   needs only pyproject.toml
#   install.sh static         needs the application tree
set -eu

case "${1:-}" in
dependencies)
    # pyproject.toml's dependencies, read from it. The application is the copied tree, not
    # a distribution ([tool.setuptools] packages = []), so `pip install .` would only add a
    # build of an empty package, and a build backend fetched for it.
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        >requirements.txt
    python -m pip install --no-cache-dir --no-warn-script-location -r requirements.txt
    rm requirements.txt
    ;;
static)
    # Collected once, at build time, for whitenoise. The settings need a SECRET_KEY only
    # to load: this one lives for the command and never reaches the image's ENV.
    SECRET_KEY="collectstatic-only-$(python -c 'import secrets; print(secrets.token_hex(16))')" \
        python manage.py collectstatic --noinput -v0
    ;;
*)
    echo "usage: install.sh dependencies|static" >&2
    exit 2
    ;;
esac
