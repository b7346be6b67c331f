"""The daemon: config, job registry, socket API, metrics, CLI and systemd glue."""
