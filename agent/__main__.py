"""``python -m agent``: the ``edge-agent`` command (agent.cli parses, prints and exits)."""
from agent.cli import run

run()
