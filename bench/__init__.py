"""`manage.py bench`: Sluice measured against its baselines on loopback, in one run.

Modules, each small and separate:
  loadgen     the load generator (its own process: its CPU is not the server's)
  openloop    an open-loop one: requests at fixed moments, whatever the answers
  procs       starting, timing and stopping server processes; /proc CPU accounting
  servers     the sandbox upstream, Sluice (embedded or scale-out) and the floor
  floor/      the floor: a bare Django async proxy view, for daphne and uvicorn; and
              bare.py, a pure ASGI forwarder with no framework (for split)
  latency     added latency, throughput and CPU per request
  decisions   limiter decisions per second over the in-memory and Redis layers
  accuracy    bursts of 3x the limit against a sandbox enforcing the same limit
  dynamic     issue 11's scenarios against Together's dynamic limits (--only dynamic)
  flood       a runaway key's flood refused locally, beside a team within its limits,
              against the same deployment asking the limiter every call (--only flood)
  server_choice  daphne against uvicorn, Sluice and the floor, at 1 and 16 callers in
              one run (run alone: the reason uvicorn is serve's default, docs/measured.md)
  report      the tables, with the issues' targets
  shards      sharded limiters simulated: real engines on a simulated clock, accounts
              split across shards, a shard's death and a shard joining (--only shards;
              shards_run the timeline, shards_report the tables)
  one_limiter what one limiter process serves: messages per call counted at Redis,
              decisions/s, a web process's calls/s (run alone, for docs/scaling.md)
  scaleout    issue 22: 1 embedded against 4 web + limiter + Redis, CPU a call
  split       what splitting into four processes costs a call: the bare forwarder and the
              floor 1 against 4, and Sluice's deployments, closed and open loop
              (--only split; only when asked)
  runner      the gateway's sequence, sized by --quick / --duration
"""
