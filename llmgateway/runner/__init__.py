"""The runner: one request lifecycle for every generating endpoint.

endpoint.py: what an endpoint module implements (Endpoint, Shaper) and uses;
lifecycle.py: `run`, the phases from the model to the settlement.
"""
