# The README's commands. A fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
POSTGRES_URL ?= postgres://root@127.0.0.1:5432/test
MARIADB_URL ?= mysql://root@127.0.0.1:3306/test
# What the MariaDB run takes: the tests of the engine on the database. The Kafka and NATS
# transports' own tests, which start brokers and ask nothing of the database the others
# do not, run in the other runs.
MARIADB_TESTS ?= tests/integration -k 'not kafka and not nats'
BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672//
REDIS_URL ?= redis://127.0.0.1:6379/0
NATS_URL ?= nats://127.0.0.1:4222
PORT ?= 8000

.PHONY: run test test-postgres test-mariadb matrix bench lint docs worker consume clean

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

## run: serve the demo on 127.0.0.1:8000, or PORT (SQLite, inline executor, demo data)
run: export DJANGO_DEBUG = 1
run: export API_ALLOW_ANONYMOUS = 1
run: export THROTTLING = 0
run: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py load_demo_data
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

## test: the whole suite (the PostgreSQL tests run when DATABASE_URL names one; the NATS
## and Kafka tests start their brokers from requirements-dev.txt's packages)
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-postgres: the suite against the local PostgreSQL, RabbitMQ, Redis and NATS
test-postgres:
	DATABASE_URL=$(POSTGRES_URL) CELERY_BROKER_URL=$(BROKER_URL) REDIS_URL=$(REDIS_URL) NATS_URL=$(NATS_URL) $(MAKE) test

## test-mariadb: the database's tests against the local MariaDB (or MySQL 8), RabbitMQ, Redis and NATS; PostgreSQL's own left out
test-mariadb: $(VENV)/.installed-dev
	DATABASE_URL=$(MARIADB_URL) CELERY_BROKER_URL=$(BROKER_URL) REDIS_URL=$(REDIS_URL) NATS_URL=$(NATS_URL) \
	$(MAKE) test PYTEST_ARGS="-m 'not postgres' $(MARIADB_TESTS) $(PYTEST_ARGS)"

## matrix: the SQLite suite on each supported Django and Python pair (nox; NOX_ARGS="-t django6.1" picks some)
matrix: $(VENV)/.installed-dev
	$(BIN)/nox $(NOX_ARGS)

## bench: the bus against hand-written Django, per message and over HTTP (DATABASE_URL picks the database; CELERY_BROKER_URL for Celery)
bench: $(VENV)/.installed
	$(BIN)/python bench/bench_bus.py
	$(BIN)/python bench/bench_http.py
	$(BIN)/python bench/bench_worker.py
	$(BIN)/python bench/bench_prune.py
	$(BIN)/python bench/bench_latency.py
	$(BIN)/python bench/bench_celery.py
	$(BIN)/python bench/bench_external.py
	$(BIN)/python bench/bench_external_latency.py
	$(BIN)/python bench/bench_async.py
	$(BIN)/python bench/bench_tracing.py
	$(BIN)/python bench/bench_serialization.py

## worker: a delivery worker on the local database
worker: export DJANGO_DEBUG = 1
worker: $(VENV)/.installed
	$(BIN)/python manage.py messagebus worker

## consume: commands from other services (MESSAGEBUS_EXTERNAL_URL) on the local database
consume: export DJANGO_DEBUG = 1
consume: $(VENV)/.installed
	$(BIN)/python manage.py messagebus consume

## lint: ruff and mypy
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --always-false BUILTIN_TASKS

## docs: the documentation as HTML in docs/_build/html (warnings are errors)
docs: $(VENV)/.installed
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .nox docs/_build db.sqlite3* test_db.sqlite3* .pytest_cache .mypy_cache .ruff_cache
