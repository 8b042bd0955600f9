"""The configuration: YAML source -> env expansion -> schema -> validated, frozen model.
Pure: imports no I/O (secret files are read once, at load)."""
