"""The configuration: YAML source -> env expansion -> parse -> validate (load.py), into
one frozen model (model.py). Pure: imports no I/O (secret files are read once, at load)."""
