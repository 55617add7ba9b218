from services.optimizer.app import create_app
from services.optimizer.settings import get_settings
from shared.runner import serve

settings = get_settings()
serve("optimizer", lambda: create_app(settings), settings, port=settings.optimizer_port)
