"""Commands an operator runs by hand beside the worker: ``tail`` (decoded records of any topic)."""
