"""The behavioural ESP32: a model of the EcoWatt gateway firmware, indistinguishable on the wire."""
