from tests.integration.performance.receivers import slack_receiver, smtp_receiver

__all__ = ["slack_receiver", "smtp_receiver"]
