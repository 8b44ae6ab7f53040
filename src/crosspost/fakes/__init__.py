"""Fake platforms for tests and benchmarks: real HTTP servers on 127.0.0.1 that enforce each
platform's rules (limits, error bodies, rate-limit headers, idempotency). They ship inside the
package, like procrastinate's `testing.py`, so benchmarks and end-to-end runs can start them too.
"""
