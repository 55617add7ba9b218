from services.gateway.event_processor.app import create_app
from services.gateway.settings import get_settings
from shared.runner import serve

settings = get_settings()
serve("event_processor", lambda: create_app(settings), settings, port=settings.event_processor_port)
