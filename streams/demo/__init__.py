"""`rakshit demo`: the whole product on one machine, with traffic, an outage and a summary."""
