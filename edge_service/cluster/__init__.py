"""Several edge replicas serving one training run through one core broker.

Each replica (an ``ares edge`` process) serves the devices a round order gives it; one of them
also holds the coordinator role under a lease retained on the broker (``lease``), plans and
orders each round and merges the replicas' shares into the global model. The messages are in
``schemas.cluster``, their topics under ``Topics.cluster_all``.
"""
