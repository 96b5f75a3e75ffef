"""The simulated fleet: devices that speak the MQTT contract (agent.wire) and nothing else of the agent."""
