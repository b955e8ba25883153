"""cifleet primary: the Flask service with the queue, scheduler, vault and CA.

The apps are made by `primary.app.create_app` and `create_agent_app`; this package imports
nothing itself, so a CLI command that never serves does not pay for Flask and the UI."""
