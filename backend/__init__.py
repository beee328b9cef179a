"""The Label Studio ML backend's web side (Flask app, queues, versions). Never imports torch: the model runs in
the workers (workers/)."""
