"""The HTTP side: the transport, the JSON API, the dashboard's pages and drawings.
It reads through `flowlord.store` and changes state only by asking the daemon's loop."""
