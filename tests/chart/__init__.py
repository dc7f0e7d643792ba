"""Tests of the Helm chart in helm/meterstream and of the Docker image it runs."""
