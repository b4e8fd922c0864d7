"""PLC simulators: a deterministic packaging-line model served over Modbus TCP and OPC UA."""
