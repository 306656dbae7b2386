"""mhd: a control-plane daemon for Linux IPVS with Maglev hashing (ip_vs_mh)."""

__version__ = "0.1.0"

#: The daemon's API socket: the config's default (`api.socket`) and mhctl's (`--socket`).
DEFAULT_SOCKET = "/run/mhd/mhd.sock"
