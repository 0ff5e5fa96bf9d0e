"""The transaction hot path: batches of records below Faust, on confluent-kafka.

Faust costs 150-200 us per event before any work; a verdict cannot afford that several times over.
So transactions, labels and authorization outcomes are consumed here in batches
(``lane.FraudLane``), their state is kept in memory per partition (``store``), outputs go through
one producer whose deliveries gate the offset commit (``outbox``), and the terminal stage decides a
transaction only once the history its features read is complete (``watermarks``). Faust still runs
the routing loop and the case book beside it, in the same worker process.
"""
