"""`rakshit api`: the analysts' and SREs' HTTP API and live dashboard, fed from Kafka.

``server`` is the process (a consumer thread feeding the read model, an aiohttp server),
``routes`` the HTTP contract, ``readmodel`` what the topics add up to, ``dashboard.html`` the page.
"""
