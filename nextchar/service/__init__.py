"""The suggestion service: nextchar over HTTP, behind a search box and an email editor.

Reading order: `settings` (what a deployment chooses), `engine` (one model thread answering
batched requests), `schemas` (the JSON bodies), `guard` (request limits), `metrics`
(Prometheus), `personal` (the per-person routes), `app` (`create_app`: the routes together).
"""
