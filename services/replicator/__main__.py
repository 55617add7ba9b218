from services.replicator.app import create_app
from services.replicator.settings import get_settings
from shared.runner import serve

settings = get_settings()
serve("replicator", lambda: create_app(settings), settings, port=settings.replication_metrics_port)
