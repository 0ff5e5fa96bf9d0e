"""Benchmarks and evaluation: commands that print figures, each against a baseline of the same run.

``pipeline`` (worker against the Faust and raw passthroughs, ``passthrough``), ``lane`` (the
lane's CPU per transaction, no broker), ``state`` (bytes per key, recovery time), ``healing`` (the
routing loop on simulated outages), ``cost`` (CPU, memory and price per 1,000 verdicts),
``evaluate`` (a handbook replay through the running worker).
"""
