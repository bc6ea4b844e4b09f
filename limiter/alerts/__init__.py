"""Alerts: a webhook per organisation (and per team) told when something needs a person.

Conditions (budget thresholds, a team's 429s, Together's 429s and 503s, the limiter
unavailable) become an `Alert` row at most once per condition and period: the row's
unique constraint is the deduplication across every web process, and whoever inserts
it queues its deliveries. A background loop in each web process sends them with
retries and backoff (never on the request path), recording every attempt.

    monitor.py    the request path's side: counters only, no I/O
    services.py   notify() (the one entry point for every condition), webhooks
    rates.py      the loop's first step: the counters summed across processes, judged
    delivery.py   the loop: the rate check, then sending what is due
    wakeup.py     the loop's doorbell, rung by notify when it queues a delivery
    payload.py    the Slack-compatible JSON, and webhook URLs with their secret hidden
    selectors.py  the dashboard's reads
"""
