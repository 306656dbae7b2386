"""Health probing, the I/O side of health: the check protocols (checkers) and the scheduler that runs
them and feeds the pure state machine in mhd.health (prober)."""
