"""The routing agents: the Analyst observes and hypothesises, the Pilot experiments and acts.

``outcomes`` is the shape both read, ``route_health`` the per-route statistics the Analyst and the
API share, ``calibration`` how the CUSUM designs were chosen.
"""
