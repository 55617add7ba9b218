from services.analytics.app import create_app
from services.analytics.settings import get_settings
from shared.runner import serve

settings = get_settings()
serve("analytics", lambda: create_app(settings), settings, port=settings.analytics_port)
