"""Shop-floor edge agent: PLC tags to OEE and throughput KPIs over MQTT."""

__version__ = "0.1.0"
