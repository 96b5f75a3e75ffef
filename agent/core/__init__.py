"""The ground floor: configuration, the error root, logging, backoff, names. Imports nothing of the agent."""
