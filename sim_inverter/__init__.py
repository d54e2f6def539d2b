"""The simulated inverter: PV physics over time, served over HTTP frames, Modbus TCP and Modbus RTU."""
