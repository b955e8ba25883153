"""cifleet worker agent."""

__version__ = "0.1.0"
