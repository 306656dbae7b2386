"""Health probing, the I/O side of health: the shared timers (timers), the probe engine and its TCP
fast path (tcp), one module per other check type (http, udp, dns, exec) behind a registry
(checkers), and the scheduler that runs them and feeds the pure state machine in mhd.health
(prober)."""
