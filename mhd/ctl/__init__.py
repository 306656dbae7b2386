"""mhctl, the operator's command line: the commands (main), the Maglev commands (maglev) and the
remote client of the daemon's API (client, standard library only)."""
