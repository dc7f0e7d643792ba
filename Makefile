# The two commands a newcomer needs are `make demo` and `make test`; both set up
# everything themselves (scripts/bootstrap.sh). The rest are for development.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(HOME)/.cache/meterstream/bin:$(PATH)

.PHONY: demo test lint bench bench-freshness bench-adaptive profile reliability soak bootstrap

bootstrap:
	scripts/bootstrap.sh

## Run the main job end to end on the local defaults: broker, emulator, sample usage, connector.
demo:
	scripts/bootstrap.sh --no-helm
	$(VENV)/meterstream demo

## The whole test suite: lint, types, Dockerfile lint, unit, integration and chart tests.
test: bootstrap lint
	$(VENV)/python -m pytest --durations=15

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/hadolint Dockerfile

## Every benchmark: throughput and CPU per event, freshness, four processes at one account
## limit (adaptive concurrency), aggregation beyond the limit. Figures in
## bench/results/latest.json (and aggregation.json), all of them in one chart (latest.png),
## then a table of each target and what was measured (bench.summary).
bench: bootstrap
	$(VENV)/python -m bench.run
	$(VENV)/python -m bench.freshness
	$(VENV)/python -m bench.adaptive
	$(VENV)/python -m bench.aggregation
	$(VENV)/python -m bench.chart
	$(VENV)/python -m bench.summary

## A steady 5,000 records/s for 60 s: record timestamp -> accepted (key "freshness").
bench-freshness: bootstrap
	$(VENV)/python -m bench.freshness

## Four processes, one account limit: adaptive concurrency on and off (key "adaptive").
bench-adaptive: bootstrap
	$(VENV)/python -m bench.adaptive

## Where one connector process spends its CPU (cProfile): bench/results/profile.txt.
profile: bootstrap
	$(VENV)/python -m bench.profile

## The reliability report's fast part (also inside `make test`) and the soak run.
reliability: bootstrap
	$(VENV)/python -m pytest tests/reliability -q

soak: bootstrap
	$(VENV)/python -m bench.soak
