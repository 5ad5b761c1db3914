"""Broker semantics kelp implements itself, for the transports it brokers (memory, SQLite, Redis).

RabbitMQ routes and stores messages on its own; these transports need kelp to do it. What they share —
queue-argument validation, equivalence of redeclarations, dead-letter headers — lives here, so each of
them behaves as RabbitMQ does in the same way. Routing itself lives in :mod:`kelp.routing`.
"""
