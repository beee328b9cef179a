"""RQ workers: the only processes that load the model (see workers/worker.py)."""
