"""A bit-exact model of the kernel's Maglev table (ip_vs_mh): SipHash (siphash), the table and its
population loops (table, with the optional compiled loop _fast), and what it predicts (predict)."""
