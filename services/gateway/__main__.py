from services.gateway.app import create_app
from services.gateway.settings import get_settings
from shared.runner import serve

settings = get_settings()
serve("gateway", lambda: create_app(settings), settings, port=settings.gateway_port)
