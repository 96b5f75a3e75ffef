"""The device: the daemon, the command router and handlers, the monitor wiring, systemd, the live view."""
