"""`manage.py bench`: Sluice measured against its baselines on loopback, in one run.

Modules, each small and separate:
  loadgen     the load generator (its own process: its CPU is not the server's)
  procs       starting, timing and stopping server processes; /proc CPU accounting
  servers     the sandbox upstream, Sluice (embedded or scale-out) and the floor
  floor/      the floor: a bare Django async proxy view, for daphne and uvicorn
  latency     added latency, throughput and CPU per request
  decisions   limiter decisions per second over the in-memory and Redis layers
  accuracy    bursts of 3x the limit against a sandbox enforcing the same limit
  report      the one table, with the issue's targets
  runner      the sequence, sized by --quick / --duration
"""
