"""BackData: POSTs events from the event queue to the customer's webhook, losing none."""
