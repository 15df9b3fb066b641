#!/bin/sh
# The allocation service as the book's end-to-end tests expect it, on PostgreSQL with
# workers: gunicorn on 127.0.0.1:5005, two delivery workers, and a consumer of the book's
# Redis channel. Run it from the checkout, after `make .venv/.installed`:
#     sh docs/examples/book/serve-with-workers.sh
# Ctrl-C stops them all.
set -eu
cd "$(dirname "$0")/../../.."

export DATABASE_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/allocation}"
export DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-change-me}"
# The book's client sends "Host: localhost:5005"; a browser or curl, 127.0.0.1.
export DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost
# The book's client signs in as no one: only on a machine of your own.
export API_ALLOW_ANONYMOUS=1
export MESSAGEBUS_EXECUTOR=worker
# Events to, and commands from, the book's Redis channels (empty: no Redis).
export MESSAGEBUS_EXTERNAL_URL="${MESSAGEBUS_EXTERNAL_URL-redis://127.0.0.1:6379/0}"

trap 'kill 0' INT TERM EXIT
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py messagebus worker &
.venv/bin/python manage.py messagebus worker &
if [ -n "$MESSAGEBUS_EXTERNAL_URL" ]; then
    .venv/bin/python manage.py messagebus consume &
fi
.venv/bin/gunicorn config.wsgi --workers 2 --bind "127.0.0.1:${PORT:-5005}"
