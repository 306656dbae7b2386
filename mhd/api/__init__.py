"""The REST API (server), the status documents it serves (status) and the Prometheus metrics
(metrics). `python -m mhd.api` prints the OpenAPI document."""
