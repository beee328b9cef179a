"""WSGI entry point: `gunicorn --workers 1 --threads 16 --timeout 120 -b 0.0.0.0:9090 _wsgi:app`.

One process with threads: the handlers mostly wait on Redis, and /metrics counts every request of the process.
The model runs in the workers (`python -m workers.worker`), never here.
"""
import logging
import os

from backend.app import create_app
from jobs.settings import Settings

_settings = Settings.from_env()
logging.basicConfig(level=_settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger(__name__).info("settings: %s", _settings.public_dict())
app = create_app(_settings)

if __name__ == "__main__":  # development only
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "9090")), threaded=True)
