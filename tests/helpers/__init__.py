"""Test helpers shared by the suites: free ports, a Mosquitto process, an MQTT subscriber."""
