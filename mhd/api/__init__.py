"""The REST API: wiring (server), routes (handlers), bearer tokens (auth), sockets and admission
(listeners), the OpenAPI document (openapi), the Maglev model loader (model), the daemon's read-only
view (view), the status documents (status) and the Prometheus metrics (metrics). `python -m mhd.api`
prints the OpenAPI document."""
