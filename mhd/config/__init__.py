"""The configuration: records and validation with positions (validate), the YAML source with line
numbers (yamlsource), the check settings (checkspec) and incremental reloads (reload). Pure: no I/O
beyond reading the file."""
