"""Outgoing webhooks of run state changes: the outbox written with each change (outbox.py),
the signed request (delivery.py, pure), the sender that delivers them from any primary
(sender.py), and what the API shows of them (service.py)."""
