"""The configuration, pure (no I/O beyond reading the file): the YAML source with line numbers and
bounds (yamlsource); what a config is (records, checkspec); how a file becomes one, with every
problem at its file:line (fields: one value, checks: a check block, validate: the file); incremental
reloads (reload) and what a reload changed (diff)."""
