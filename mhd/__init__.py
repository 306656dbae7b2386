"""mhd: a control-plane daemon for Linux IPVS with Maglev hashing (ip_vs_mh)."""

__version__ = "0.1.0"
