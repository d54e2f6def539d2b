"""The EcoWatt cloud: the firmware's device API and the operator API on durable storage."""
