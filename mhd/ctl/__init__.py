"""mhctl, the operator's command line: its one parser (main), the one mapping of failures to exit
statuses (exits), the offline commands (offline), the Maglev commands (maglev) and the remote client
of the daemon's API with its rendering (client, standard library only)."""
