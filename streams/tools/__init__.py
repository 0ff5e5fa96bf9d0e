"""Commands a person runs by hand beside the product: ``tail`` (decoded records of any topic),
``offline_evaluate`` (a handbook protocol trained and scored offline) and ``reference_check``
(the offline features against the handbook's own)."""
