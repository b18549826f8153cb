"""The embedded servers of one state dir (PostgreSQL, Redis, the Prefect server and its own
PostgreSQL), their locks and processes: what runs when nothing is configured, on one machine."""
