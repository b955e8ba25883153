"""cifleet primary: the Flask service with the queue, scheduler, vault and CA."""

from primary.app import create_agent_app, create_app

__all__ = ["create_app", "create_agent_app"]
