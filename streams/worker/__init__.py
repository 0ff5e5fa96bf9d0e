"""`rakshit worker`: one process, two engines, each where its cost fits.

- The fraud lane (``lane``) takes transactions, labels and authorization outcomes in batches on
  confluent-kafka, below Faust's per-event machinery: admission (``admission``, ``validation``),
  the card and terminal stages (``stages``) around the decision chain (``chain``), state per
  partition (``store``) checkpointed through changelogs and one producer whose deliveries gate the
  offset commit (``outbox``), the watermark gate (``watermarks``) and the collector between
  batches (``collector``).
- The Faust app (``app`` on ``transport``) runs the routing loop (``routing``, its state through
  ``write_behind``) and the case book (``casework``), whose rates make Faust's cost nothing.

Both export the same Prometheus metrics (``metrics``).
"""
