"""Decision and routing agents: plain functions and classes over plain data, no Kafka, no Faust.

The values made for every transaction (checks, plans, scores, verdict parts) are slotted
dataclasses that nobody assigns to after construction; change one with ``dataclasses.replace``.
They are not ``frozen``: a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, four times the cost, and about thirty such values are made per verdict.
"""
